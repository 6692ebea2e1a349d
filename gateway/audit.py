"""The audit store: one record per decision and per outcome, durably committed, chained per writer.

Every call gets a ``call_id`` (returned to the agent as ``X-Wardgate-Audit-Id``) and records:

- ``intent``   an allowed call, committed *before* anything is forwarded (no record, no forwarding);
- ``outcome``  what happened after forwarding: status, bytes, latencies, error;
- ``refusal``  a call that ended at the gateway: unauthenticated, denied, or a dependency down;
- ``admin``    an operator action on identity: a revocation, an agent disabled (see revoker.py).

Writes go through one writer thread that commits whatever is queued in one transaction (group
commit), so durability costs one commit per batch rather than per call. Each writer process keeps
a SHA-256 chain over the canonical bytes of its records (``prev_hash`` → ``hash``), so edits,
deletions and reordering are detectable later; signed checkpoints (audit_checkpoint) pin the chain
so truncation and whole-chain rewrites are detectable too (audit_verify). Records the store cannot
take after the fact (outcomes) go to a local spool (audit_spool) and are replayed.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import operator
import queue
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from .audit_checkpoint import CHECKPOINT_SCHEMA, INSERT_CHECKPOINT, Checkpoint, CheckpointSink, checkpoint_row
from .audit_keys import CheckpointSigner
from .audit_spool import Spool
from .audit_store import (
    SQLITE, Dialect, Postgres, PostgresWriterStore, Source, SqliteWriterStore, StoreError, quoted, reader, store_exists,
)
from .errors import DependencyUnavailable
from .ids import new_id
from .metrics import Metrics

log = logging.getLogger("wardgate.audit")

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_records (
    id TEXT PRIMARY KEY,
    call_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('intent', 'outcome', 'refusal', 'admin')),
    time REAL NOT NULL,
    tenant TEXT, agent TEXT, user TEXT, token_id TEXT, run TEXT, step TEXT,
    method TEXT, scheme TEXT, host TEXT, port INTEGER, path TEXT,
    decision TEXT, reasons TEXT NOT NULL DEFAULT '[]', decision_id TEXT, policy_revision TEXT,
    credential_service TEXT,
    status INTEGER, bytes_in INTEGER, bytes_out INTEGER,
    latency_policy_ms REAL, latency_upstream_ms REAL, latency_total_ms REAL,
    scrub_count INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    mcp_method TEXT, mcp_tool TEXT, mcp_arguments TEXT,
    idempotency_key TEXT, replay INTEGER NOT NULL DEFAULT 0,
    usage TEXT, trace_id TEXT,
    policy_input TEXT,
    writer TEXT NOT NULL, seq INTEGER NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL,
    UNIQUE (writer, seq)
);
CREATE INDEX IF NOT EXISTS audit_call ON audit_records (call_id);
CREATE INDEX IF NOT EXISTS audit_time ON audit_records (time);
CREATE INDEX IF NOT EXISTS audit_agent ON audit_records (agent, time);
""" + CHECKPOINT_SCHEMA

Kind = Literal["intent", "outcome", "refusal", "admin"]
GENESIS = "0" * 64


@dataclass(slots=True)
class AuditRecord:
    call_id: str
    kind: Kind
    time: float = field(default_factory=time.time)
    tenant: str | None = None
    agent: str | None = None
    user: str | None = None
    token_id: str | None = None
    run: str | None = None
    step: str | None = None
    method: str | None = None
    scheme: str | None = None
    host: str | None = None
    port: int | None = None
    path: str | None = None
    decision: str | None = None
    reasons: list[str] = field(default_factory=list)
    decision_id: str | None = None
    policy_revision: str | None = None
    credential_service: str | None = None
    status: int | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    latency_policy_ms: float | None = None
    latency_upstream_ms: float | None = None
    latency_total_ms: float | None = None
    scrub_count: int = 0
    error: str | None = None
    mcp_method: str | None = None
    mcp_tool: str | None = None
    mcp_arguments: str | None = None  # JSON, with fields the policy marks sensitive redacted
    idempotency_key: str | None = None
    replay: int = 0
    usage: str | None = None  # JSON token usage reported by LLM APIs
    trace_id: str | None = None
    # The policy input the decision was made on (JSON; no credentials, MCP arguments redacted as
    # the decision said), so `wardgate policy explain` can re-evaluate it later.
    policy_input: str | None = None
    id: str = field(default_factory=new_id)

    def canonical(self) -> bytes:
        """The hashed bytes. Numbers are normalised to the column types they are stored as, so a
        record read back from the store hashes exactly as it did when written."""
        return _canonical(_normalized(self))


_FLOAT_FIELDS = ("time", "latency_policy_ms", "latency_upstream_ms", "latency_total_ms")
_INT_FIELDS = ("port", "status", "bytes_in", "bytes_out", "scrub_count", "replay")


_RECORD_FIELDS = [f.name for f in fields(AuditRecord)]
_COLUMNS = _RECORD_FIELDS + ["writer", "seq", "prev_hash", "hash"]
_INSERT_HEAD = f"INSERT INTO audit_records ({quoted(_COLUMNS)}) VALUES "
_INSERT_ROW = f"({', '.join('?' * len(_COLUMNS))})"

# The canonical bytes are computed for every record on the writer thread, which holds the GIL while
# it does so: one C call gathers the values (in column order), another reorders them by name, and
# an encoder built once writes the JSON (the keys arrive sorted, so sort_keys is not needed).
_VALUES = operator.attrgetter(*_RECORD_FIELDS)
_SORTED_NAMES = sorted(_RECORD_FIELDS)
_BY_NAME = operator.itemgetter(*(_RECORD_FIELDS.index(name) for name in _SORTED_NAMES))
_FLOAT_AT = tuple(_RECORD_FIELDS.index(name) for name in _FLOAT_FIELDS)
_INT_AT = tuple(_RECORD_FIELDS.index(name) for name in _INT_FIELDS)
_REASONS_AT = _RECORD_FIELDS.index("reasons")
_CANONICAL_JSON = json.JSONEncoder(separators=(",", ":"))


def _normalized(record: AuditRecord) -> list[Any]:
    """The record's values in column order, numbers as the column types they are stored as."""
    values = list(_VALUES(record))
    for index in _FLOAT_AT:
        if values[index] is not None:
            values[index] = float(values[index])
    for index in _INT_AT:
        if values[index] is not None:
            values[index] = int(values[index])
    return values


def _canonical(values: list[Any]) -> bytes:
    """Canonical JSON (keys sorted, no spaces) of normalised values, as ``json.dumps(..., sort_keys=True)``."""
    return _CANONICAL_JSON.encode(dict(zip(_SORTED_NAMES, _BY_NAME(values)))).encode()


def chain_hash(prev_hash: str, record: AuditRecord) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + record.canonical()).hexdigest()


def record_from_row(row: Any) -> AuditRecord:
    """The record as it was hashed, rebuilt from a stored row (``reasons`` is stored as JSON)."""
    values = {name: row[name] for name in _RECORD_FIELDS}
    values["reasons"] = json.loads(values["reasons"]) if isinstance(values["reasons"], str) else values["reasons"]
    return AuditRecord(**values)


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    """When the writer signs a checkpoint: every ``every`` records, every ``interval`` seconds
    while records arrive, and after ``idle`` seconds without any."""

    signer: CheckpointSigner
    every: int = 1000
    interval: float = 10.0
    idle: float = 1.0
    sink: CheckpointSink | None = None


# (record, future the caller awaits, spool the record if the store refuses it)
_Item = tuple[AuditRecord, "asyncio.Future[None]", bool]
_WAKE = "wake"  # queued by record_later when the writer sleeps with no deadline (see _next)
_NOTHING = "nothing"  # _next's answer when its wait ran out
_AWAKE = 1.0  # seconds after a batch during which the writer looks for outcomes without being woken


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():  # nobody waits any more; the writer still commits (or spools) the record
        future.set_exception(DependencyUnavailable("audit record could not be committed in time", code="audit_unavailable"))


class AuditWriter:
    """Appends records from one gateway process through a single group-commit thread.

    Two ways in. ``commit`` (intents, refusals, admin records) queues a record with a future and
    wakes the writer, which commits everything queued in one transaction and then resolves that
    batch's futures with one hand-off to the event loop. ``record_later`` (outcomes) only appends
    to a list the writer takes along with the next batch: nobody waits for those records, so they
    cost neither a wake-up of the writer nor a transaction of their own while calls keep coming;
    when none come, they are committed ``linger`` seconds later.
    """

    def __init__(
        self,
        path: Source,
        *,
        max_batch: int = 512,
        checkpoints: CheckpointPolicy | None = None,
        spool: Spool | None = None,
        busy_timeout: float = 5.0,
        retry_interval: float = 0.5,
        linger: float = 0.02,
        metrics: Metrics | None = None,
    ) -> None:
        self._path = path
        self.metrics = metrics or Metrics()
        self._max_batch = max_batch
        self._checkpoints = checkpoints
        self._spool = spool
        self._busy_timeout = busy_timeout
        self._retry_interval = retry_interval
        self._linger = linger
        self._queue: queue.SimpleQueue[_Item | str | None] = queue.SimpleQueue()
        # deque.append and popleft are atomic: the loop appends, the writer takes.
        self._later: collections.deque[AuditRecord] = collections.deque()
        # True while the writer waits with nothing in _later: then record_later must wake it.
        self._asleep = False
        self.writer_id = new_id()
        self._seq = 0
        self._prev = GENESIS
        self._checkpointed_seq = 0
        self._checkpointed_at = time.monotonic()
        # Writer thread: when the last batch was written, the spool last replayed, a checkpoint last tried.
        self._active_at = self._retried_at = self._attempted_at = 0.0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._submitted = 0  # written by the event loop only
        self._settled = 0  # written by the writer thread only
        # Written by the writer thread, read by readiness and metrics (plain ints: atomic enough).
        self.spooled = 0
        self.lost = 0
        self.committed = 0
        self.batches = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        ready: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="audit-writer", daemon=True)
        self._thread.start()
        error = ready.get()
        if error is not None:
            raise DependencyUnavailable(f"audit store cannot be opened: {error}", code="audit_unavailable")

    async def stop(self) -> None:
        """Drain the queue, then sign the clean-stop checkpoint that closes this writer's chain."""
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join, 10.0)
            self._thread = None
        if self._checkpoints is not None and self._checkpoints.sink is not None:
            await asyncio.to_thread(self._checkpoints.sink.close)

    @property
    def healthy(self) -> bool:
        """Nothing waits in the spool: every record so far is in the store."""
        return self.spooled == 0

    @property
    def pending(self) -> int:
        """Records queued but not yet committed (or spooled)."""
        return self._submitted - self._settled

    def submit(self, record: AuditRecord, *, spool_on_failure: bool = False) -> asyncio.Future[None]:
        """Queue ``record``; the future resolves once it is committed (or fails)."""
        assert self._loop is not None, "AuditWriter.start() first"
        future: asyncio.Future[None] = self._loop.create_future()
        self.metrics.observe_record(record)
        self._submitted += 1
        self._queue.put((record, future, spool_on_failure))
        return future

    def record_later(self, record: AuditRecord) -> None:
        """Queue ``record`` without waiting for its commit (outcomes: the response goes on).

        It is committed with the next batch, or ``linger`` seconds from now if no batch comes
        sooner. If the store cannot take it, the writer puts it in the spool instead (see audit_spool).
        """
        self.metrics.observe_record(record)
        self._submitted += 1
        self._later.append(record)
        if self._asleep:
            self._asleep = False
            self._queue.put(_WAKE)

    async def commit(self, record: AuditRecord, timeout: float, *, spool_on_failure: bool = False) -> None:
        """Commit ``record`` durably or raise ``audit_unavailable``: the caller must not proceed.

        ``spool_on_failure`` (refusals): if the store refuses the record, keep it in the spool
        anyway; the caller still gets the error, since the record is not in the store yet.
        """
        future = self.submit(record, spool_on_failure=spool_on_failure)
        assert self._loop is not None
        started = time.perf_counter()
        # A timer that fails the future rather than asyncio.wait_for(shield(...)): the same
        # outcome for a fraction of the event loop's time.
        expiry = self._loop.call_later(timeout, _expire, future)
        try:
            await future
        finally:
            expiry.cancel()
        self.metrics.observe_commit(time.perf_counter() - started)

    # -- writer thread ---------------------------------------------------------------------------

    def _open(self) -> SqliteWriterStore | PostgresWriterStore:
        if isinstance(self._path, Postgres):
            return PostgresWriterStore(self._path.dsn, SCHEMA, self._busy_timeout)
        return SqliteWriterStore(self._path, SCHEMA, self._busy_timeout)

    def _run(self, ready: "queue.SimpleQueue[BaseException | None]") -> None:
        try:
            conn = self._open()
            if self._spool is not None:
                self.spooled = len(self._spool)
            if self._checkpoints is not None:
                self._checkpoint(conn, "open", raise_errors=True)
        except (StoreError, OSError) as exc:
            ready.put(exc)
            return
        ready.put(None)
        stopping = False
        while not stopping:
            item = self._next()
            batch: list[_Item] = []
            while item is not _NOTHING:
                if item is None:
                    stopping = True
                    break
                if item is not _WAKE:
                    batch.append(item)  # type: ignore[arg-type]
                    if len(batch) >= self._max_batch:
                        break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            # Outcomes go with a batch, or alone once the linger ran out; a wake-up alone starts it.
            if batch or (self._later and (item is _NOTHING or stopping)):
                self._write(conn, batch, self._take_later(self._max_batch - len(batch)))
                self._active_at = time.monotonic()
            self._duties(conn, stopping)
        while self._later:
            self._write(conn, [], self._take_later(self._max_batch))
        if self._checkpoints is not None:
            self._checkpoint(conn, "clean_stop")
        conn.close()

    def _duties(self, conn: SqliteWriterStore | PostgresWriterStore, stopping: bool) -> None:
        """Spool replay and checkpoints, when they are due."""
        now = time.monotonic()
        if self.spooled and (stopping or now - self._retried_at >= self._retry_interval):
            self._replay_spool(conn)
            self._retried_at = time.monotonic()
        policy = self._checkpoints
        if policy is None or self._seq <= self._checkpointed_seq:
            return
        if self._seq - self._checkpointed_seq >= policy.every or now - self._checkpointed_at >= policy.interval:
            self._checkpoint(conn, "periodic")
        elif now - max(self._active_at, self._attempted_at) >= policy.idle and not self._later:
            self._checkpoint(conn, "idle")

    def _next(self) -> _Item | str | None:
        """The next queued item, or _NOTHING once the wait for it ran out (then duties may be due).

        While calls are in flight (records came within ``_AWAKE`` seconds) the writer wakes every
        ``linger`` seconds to look for outcomes, so that record_later needs no wake-up; after that
        it sleeps until woken (then record_later queues _WAKE).
        """
        now = time.monotonic()
        deadlines = []
        if self._later:
            deadlines.append(now if len(self._later) >= self._max_batch else now + self._linger)
        elif now - self._active_at < _AWAKE:
            deadlines.append(now + self._linger)
        if self._checkpoints is not None and self._seq > self._checkpointed_seq:
            policy = self._checkpoints
            due = min(self._active_at + policy.idle, self._checkpointed_at + policy.interval)
            deadlines.append(max(due, self._attempted_at + policy.idle))  # a failed attempt: retry later
        if self.spooled:
            deadlines.append(self._retried_at + self._retry_interval)
        wait = max(0.0, min(deadlines) - now) if deadlines else None
        if not self._later and (wait is None or wait > self._linger):
            self._asleep = True
            if self._later:  # recorded just before the flag went up: it gets no wake-up
                self._asleep = False
                wait = self._linger
        try:
            return self._queue.get(timeout=wait)
        except queue.Empty:
            return _NOTHING
        finally:
            self._asleep = False

    def _take_later(self, limit: int) -> list[AuditRecord]:
        taken = []
        later = self._later
        while later and len(taken) < limit:
            taken.append(later.popleft())
        return taken

    def _insert(self, conn: SqliteWriterStore | PostgresWriterStore, records: list[AuditRecord]) -> None:
        """Chain and commit ``records`` in one transaction; the chain advances only on success."""
        seq, prev, writer = self._seq, self._prev, self.writer_id
        rows = []
        for record in records:
            values = _normalized(record)
            digest = hashlib.sha256(prev.encode() + b"\n" + _canonical(values)).hexdigest()
            seq += 1
            values[_REASONS_AT] = json.dumps(values[_REASONS_AT])
            values += (writer, seq, prev, digest)
            rows.append(values)
            prev = digest
        conn.append(_INSERT_HEAD, _INSERT_ROW, rows)
        self._seq, self._prev = seq, prev
        self.committed += len(records)
        self.batches += 1

    def _write(self, conn: SqliteWriterStore | PostgresWriterStore, batch: list[_Item], later: list[AuditRecord]) -> None:
        """Commit ``later`` (outcomes, older) and ``batch`` together, then settle the batch's futures."""
        records = later + [record for record, _, _ in batch]
        if not records:
            return
        error: BaseException | None = None
        try:
            self._insert(conn, records)
        except StoreError as exc:
            error = exc
            log.error("audit store write failed (%s records): %s", len(records), exc)
            # Outcomes and refusals go to the spool; an intent that failed is a refused call
            # (its refusal record says so), so it is not kept as if it had gone out.
            orphans = later + [record for record, _, keep in batch if keep]
            if orphans:
                self._to_spool(orphans)
        self._settled += len(records)
        if batch:  # outcomes alone: nobody waits, so the event loop is not woken
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._resolve, [future for _, future, _ in batch], error)

    def _to_spool(self, records: list[AuditRecord]) -> None:
        if self._spool is None:
            self.lost += len(records)
            log.error("%s audit records lost: no spool configured", len(records))
            return
        try:
            self._spool.append(records)
            self.spooled += len(records)
        except OSError as exc:
            self.lost += len(records)
            log.error("%s audit records lost: spool not writable (%s)", len(records), exc.strerror)

    def _replay_spool(self, conn: SqliteWriterStore | PostgresWriterStore) -> None:
        assert self._spool is not None
        records = self._spool.read()
        try:
            if records:
                # A crash between commit and clear would replay twice: skip ids already stored.
                present: set[str] = set()
                for start in range(0, len(records), 500):
                    present |= conn.existing_ids([r.id for r in records[start:start + 500]])
                fresh = list({r.id: r for r in records if r.id not in present}.values())
                if fresh:
                    self._insert(conn, fresh)
            self._spool.clear()
            self.spooled = 0
            log.info("audit spool replayed: %s records", len(records))
        except StoreError as exc:
            log.warning("audit spool not replayed yet: %s", exc)

    def _checkpoint(self, conn: SqliteWriterStore | PostgresWriterStore, kind: str, *, raise_errors: bool = False) -> None:
        policy = self._checkpoints
        assert policy is not None
        self._attempted_at = time.monotonic()
        cp = Checkpoint.signed(policy.signer, writer=self.writer_id, seq=self._seq, hash=self._prev, time=time.time(), kind=kind)
        try:
            conn.transaction([(INSERT_CHECKPOINT, [checkpoint_row(cp)])])
        except StoreError as exc:
            if raise_errors:
                raise
            log.warning("audit checkpoint not written: %s", exc)
            return
        self._checkpointed_seq, self._checkpointed_at = self._seq, time.monotonic()
        if policy.sink is not None:
            policy.sink.emit(cp)

    def _resolve(self, futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
        for future in futures:
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(DependencyUnavailable("audit store write failed", code="audit_unavailable"))


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters on the audit log. Equality on the named columns; ``path_contains`` is free text in
    the path; ``since``/``until`` are epoch seconds; ``before``/``after`` are record ids (cursors)."""

    agent: str | None = None
    user: str | None = None
    tenant: str | None = None
    run: str | None = None
    host: str | None = None
    method: str | None = None
    decision: str | None = None
    status: int | None = None
    kind: str | None = None
    call_id: str | None = None
    record_id: str | None = None
    path_contains: str | None = None
    since: float | None = None
    until: float | None = None
    before: str | None = None
    after: str | None = None
    oldest_first: bool = False
    limit: int = 100


_EQUALITY = ("agent", "user", "tenant", "run", "host", "method", "decision", "status", "kind", "call_id")


def query_sql(q: AuditQuery, dialect: Dialect = SQLITE) -> tuple[str, list[Any]]:
    """The SELECT for ``q`` (parameters bound, never interpolated)."""
    clauses, params = [], []
    for column in _EQUALITY:
        value = getattr(q, column)
        if value is not None:
            clauses.append(f'"{column}" = ?')
            params.append(value.upper() if column == "method" else value)
    if q.record_id is not None:
        clauses.append('"id" = ?')
        params.append(q.record_id)
    if q.path_contains:
        clauses.append(dialect.contains("path"))
        params.append(q.path_contains)
    for column, op, value in (("time", ">=", q.since), ("time", "<", q.until), ("id", "<", q.before), ("id", ">", q.after)):
        if value is not None:
            clauses.append(f'"{column}" {op} ?')
            params.append(value)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    order = "ASC" if q.oldest_first else "DESC"
    params.append(max(1, min(q.limit, 10000)))
    return dialect.sql(f'SELECT * FROM audit_records {where} ORDER BY "id" {order} LIMIT ?'), params


def query_records(source: Source, q: AuditQuery) -> list[dict[str, Any]]:
    """Newest first (or oldest first). Its own read connection: readers never block the writer."""
    if not store_exists(source):
        return []
    with reader(source, SCHEMA) as (conn, dialect):
        sql, params = query_sql(q, dialect)
        rows = conn.execute(sql, params).fetchall()
    result = []
    for row in rows:
        item = dict(row)
        item["reasons"] = json.loads(item["reasons"])
        result.append(item)
    return result
