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
import hashlib
import json
import logging
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
        # A flat copy (the fields are scalars and a list of strings): dataclasses.asdict's deep copy
        # cost more than the hashing, on the writer thread, twice per call.
        values = {name: getattr(self, name) for name in _RECORD_FIELDS}
        for name in _FLOAT_FIELDS:
            if values[name] is not None:
                values[name] = float(values[name])
        for name in _INT_FIELDS:
            if values[name] is not None:
                values[name] = int(values[name])
        return json.dumps(values, sort_keys=True, separators=(",", ":")).encode()


_FLOAT_FIELDS = ("time", "latency_policy_ms", "latency_upstream_ms", "latency_total_ms")
_INT_FIELDS = ("port", "status", "bytes_in", "bytes_out", "scrub_count", "replay")


_RECORD_FIELDS = [f.name for f in fields(AuditRecord)]
_COLUMNS = _RECORD_FIELDS + ["writer", "seq", "prev_hash", "hash"]
_INSERT = f"INSERT INTO audit_records ({quoted(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"


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


# (record, future the caller awaits or None, spool the record if the store refuses it)
_Item = tuple[AuditRecord, "asyncio.Future[None] | None", bool]


class AuditWriter:
    """Appends records from one gateway process through a single group-commit thread."""

    def __init__(
        self,
        path: Source,
        *,
        max_batch: int = 512,
        checkpoints: CheckpointPolicy | None = None,
        spool: Spool | None = None,
        busy_timeout: float = 5.0,
        retry_interval: float = 0.5,
        metrics: Metrics | None = None,
    ) -> None:
        self._path = path
        self.metrics = metrics or Metrics()
        self._max_batch = max_batch
        self._checkpoints = checkpoints
        self._spool = spool
        self._busy_timeout = busy_timeout
        self._retry_interval = retry_interval
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self.writer_id = new_id()
        self._seq = 0
        self._prev = GENESIS
        self._checkpointed_seq = 0
        self._checkpointed_at = time.monotonic()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.pending = 0
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

    def submit(self, record: AuditRecord, *, spool_on_failure: bool = False) -> asyncio.Future[None]:
        """Queue ``record``; the future resolves once it is committed (or fails)."""
        assert self._loop is not None, "AuditWriter.start() first"
        future: asyncio.Future[None] = self._loop.create_future()
        self.metrics.observe_record(record)
        self.pending += 1
        self._queue.put((record, future, spool_on_failure))
        return future

    def record_later(self, record: AuditRecord) -> None:
        """Queue ``record`` without waiting for its commit (outcomes: the response goes on).

        If the store cannot take it, the writer puts it in the spool instead (see audit_spool).
        """
        self.metrics.observe_record(record)
        self.pending += 1
        self._queue.put((record, None, True))

    async def commit(self, record: AuditRecord, timeout: float, *, spool_on_failure: bool = False) -> None:
        """Commit ``record`` durably or raise ``audit_unavailable``: the caller must not proceed.

        ``spool_on_failure`` (refusals): if the store refuses the record, keep it in the spool
        anyway; the caller still gets the error, since the record is not in the store yet.
        """
        future = self.submit(record, spool_on_failure=spool_on_failure)
        started = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
            self.metrics.observe_commit(time.perf_counter() - started)
        except TimeoutError:
            future.cancel()  # nobody waits any more; the writer still commits (or spools) it
            raise DependencyUnavailable("audit record could not be committed in time", code="audit_unavailable") from None

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
        last_retry = 0.0
        stopping = False
        while not stopping:
            uncovered = self._checkpoints is not None and self._seq > self._checkpointed_seq
            wait = self._checkpoints.idle if uncovered and self._checkpoints else None
            if self.spooled:
                wait = min(wait or self._retry_interval, self._retry_interval)
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                if self.spooled:
                    self._replay_spool(conn)
                    last_retry = time.monotonic()
                if self._checkpoints is not None and self._seq > self._checkpointed_seq:
                    self._checkpoint(conn, "idle")
                continue
            batch: list[_Item] = []
            while True:
                if item is None:
                    stopping = True
                    break
                batch.append(item)
                if len(batch) >= self._max_batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write(conn, batch)
            if self.spooled and (stopping or time.monotonic() - last_retry >= self._retry_interval):
                self._replay_spool(conn)
                last_retry = time.monotonic()
            policy = self._checkpoints
            if policy is not None and self._seq > self._checkpointed_seq and (
                self._seq - self._checkpointed_seq >= policy.every
                or time.monotonic() - self._checkpointed_at >= policy.interval
            ):
                self._checkpoint(conn, "periodic")
        if self._checkpoints is not None:
            self._checkpoint(conn, "clean_stop")
        conn.close()

    def _insert(self, conn: SqliteWriterStore | PostgresWriterStore, records: list[AuditRecord]) -> None:
        """Chain and commit ``records`` in one transaction; the chain advances only on success."""
        seq, prev = self._seq, self._prev
        rows = []
        for record in records:
            seq += 1
            digest = chain_hash(prev, record)
            values = [getattr(record, name) for name in _RECORD_FIELDS]
            values[_RECORD_FIELDS.index("reasons")] = json.dumps(record.reasons)
            rows.append((*values, self.writer_id, seq, prev, digest))
            prev = digest
        conn.transaction([(_INSERT, rows)])
        self._seq, self._prev = seq, prev
        self.committed += len(records)
        self.batches += 1

    def _write(self, conn: SqliteWriterStore | PostgresWriterStore, batch: list[_Item]) -> None:
        error: BaseException | None = None
        try:
            self._insert(conn, [record for record, _, _ in batch])
        except StoreError as exc:
            error = exc
            log.error("audit store write failed (%s records): %s", len(batch), exc)
            # Outcomes and refusals go to the spool; an intent that failed is a refused call
            # (its refusal record says so), so it is not kept as if it had gone out.
            orphans = [record for record, _, keep in batch if keep]
            if orphans:
                self._to_spool(orphans)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._resolve, [f for _, f, _ in batch], error)

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

    def _resolve(self, futures: list[asyncio.Future[None] | None], error: BaseException | None) -> None:
        self.pending -= len(futures)
        for future in futures:
            if future is None or future.done():
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
