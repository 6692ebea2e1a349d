"""The audit writer: chains and group-commits audit records. The gateway runs it as the loop of
its writer process (audit_child: ``open`` then ``serve`` with the socket as inbox, settled records
reported through ``on_settled``); the CLI and tests run it on a thread (``start``/``stop``).

Callers on the event loop ``commit`` a record and wait for it to be durable (intents, refusals,
admin records) or hand it over with ``record_later`` (outcomes). The thread commits whatever is
queued in one transaction, signs checkpoints (audit_checkpoint), and puts what the store refuses in
the spool (audit_spool) to replay later. Records, their canonical bytes and the chain are in audit.py.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .audit import GENESIS, INSERT_HEAD, INSERT_ROW, SCHEMA, AuditRecord, chain_rows, prepared
from .audit_checkpoint import INSERT_CHECKPOINT, Checkpoint, CheckpointSink, checkpoint_row
from .audit_keys import CheckpointSigner
from .audit_spool import Spool
from .audit_store import Postgres, PostgresWriterStore, Source, SqliteWriterStore, StoreError
from .errors import DependencyUnavailable
from .ids import new_id
from .metrics import Metrics

log = logging.getLogger("wardgate.audit")


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
_Item = tuple[AuditRecord, "asyncio.Future[None] | None", bool]  # no future in the writer process
WAKE = "wake"  # queued by record_later when the writer sleeps with no deadline (see _next)
FLUSH = "flush"  # like WAKE, and the outcomes it came with are committed now, not with the next batch
ABANDONED = "abandoned"  # an inbox's end: stop like None, but the caller went away without a word
_NOTHING = "nothing"  # _next's answer when its wait ran out
_AWAKE = 1.0  # seconds after a batch during which the writer looks for outcomes without being woken


class Inbox(Protocol):
    """Where the writer takes records from: its own queue, or the writer process's socket."""

    def get(self, timeout: float | None = None) -> _Item | str | None: ...

    def get_nowait(self) -> _Item | str | None: ...


class AuditLog(Protocol):
    """What the proxy and the admin API use of an audit writer: AuditWriter (a thread) or, in the
    gateway, AuditProcess (a process of its own) and, in its workers, AuditLink (audit_process)."""

    metrics: Metrics
    # Commits somebody waits for right now (PendingCommit keeps it; proxy/polling_selector.py reads it).
    awaiting: int

    def submit(self, record: AuditRecord, *, spool_on_failure: bool = False) -> asyncio.Future[None]: ...

    async def commit(self, record: AuditRecord, timeout: float, *, spool_on_failure: bool = False) -> None: ...

    def record_later(self, record: AuditRecord) -> None: ...

    @property
    def healthy(self) -> bool: ...

    @property
    def pending(self) -> int: ...

    # committed, batches, spooled, lost: counters for /metrics
    @property
    def committed(self) -> int: ...

    @property
    def batches(self) -> int: ...

    @property
    def spooled(self) -> int: ...

    @property
    def lost(self) -> int: ...


def expire_wait(future: asyncio.Future[None]) -> None:
    if not future.done():  # nobody waits any more; the writer still commits (or spools) the record
        future.set_exception(DependencyUnavailable("audit record could not be committed in time", code="audit_unavailable"))


class PendingCommit:
    """A record handed to the writer now whose commit is waited for later, within ``timeout`` of now.

    The intent record is sent as soon as the call is judged and waited for just before the call
    leaves, so its commit overlaps reading the rest of the request (proxy/intent.py); ``commit`` is
    the same with the wait at once. A commit nobody ends up waiting for (the call failed in between)
    settles quietly: its timer is cancelled and a failure is not reported as never retrieved.
    """

    __slots__ = ("_audit", "_expiry", "_future", "_started")

    def __init__(self, audit: AuditLog, record: AuditRecord, timeout: float, *, spool_on_failure: bool = False) -> None:
        # A timer that fails the future rather than asyncio.wait_for(shield(...)): the same outcome
        # for a fraction of the event loop's time.
        self._started = time.perf_counter()
        self._audit = audit
        self._future = audit.submit(record, spool_on_failure=spool_on_failure)
        self._expiry = asyncio.get_running_loop().call_later(timeout, expire_wait, self._future)
        self._future.add_done_callback(self._settled)
        audit.awaiting += 1

    def _settled(self, future: asyncio.Future[None]) -> None:
        self._audit.awaiting -= 1
        self._expiry.cancel()
        if not future.cancelled():
            future.exception()  # retrieved: a caller that waits still gets it raised

    @property
    def done(self) -> bool:
        """Already settled: only a failure can be known this early (the writer is down)."""
        return self._future.done()

    async def wait(self) -> None:
        """Returns once the record is durable; ``audit_unavailable`` if it is not within the timeout."""
        await self._future
        self._audit.metrics.observe_commit(time.perf_counter() - self._started)


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
        on_settled: Callable[[list[str], list[str]], None] | None = None,
    ) -> None:
        self._path = path
        self.metrics = metrics or Metrics()
        self._max_batch = max_batch
        self._checkpoints = checkpoints
        self._spool = spool
        self._busy_timeout = busy_timeout
        self._retry_interval = retry_interval
        self._linger = linger
        # The writer process (audit_child, see serve) is told on the writer's own thread which records
        # settled, committed or spooled (first list) or refused (second), instead of resolving futures.
        self._on_settled = on_settled
        self._queue: queue.SimpleQueue[_Item | str | None] = queue.SimpleQueue()
        self._inbox: Inbox = self._queue
        # deque.append and popleft are atomic: the loop appends, the writer takes.
        self._later: collections.deque[AuditRecord] = collections.deque()
        self.awaiting = 0  # PendingCommits in flight (the event loop's thread only)
        # Outcomes normalised and encoded while the writer had nothing else to do (see serve):
        # record id -> what audit.prepared gave; chain_rows takes them out.
        self._ready: dict[str, tuple[list[Any], bytes]] = {}
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
        self._clean = True  # False once the inbox says ABANDONED: no clean-stop checkpoint then
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
        ready: queue.SimpleQueue[DependencyUnavailable | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="audit-writer", daemon=True)
        self._thread.start()
        error = ready.get()
        if error is not None:
            raise error

    async def stop(self) -> None:
        """Drain the queue, then sign the clean-stop checkpoint that closes this writer's chain."""
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join, 10.0)
            self._thread = None
        await asyncio.to_thread(self.close_sink)

    def close_sink(self) -> None:
        """Wait (blocking) for the checkpoint sink to pass on the last checkpoints."""
        if self._checkpoints is not None and self._checkpoints.sink is not None:
            self._checkpoints.sink.close()

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
            self._queue.put(WAKE)

    def queue_later(self, record: AuditRecord) -> None:
        """``record_later`` from the writer's own thread (the writer process's inbox): no wake-up."""
        self._submitted += 1
        self._later.append(record)

    async def commit(self, record: AuditRecord, timeout: float, *, spool_on_failure: bool = False) -> None:
        """Commit ``record`` durably or raise ``audit_unavailable``: the caller must not proceed.

        ``spool_on_failure`` (refusals): if the store refuses the record, keep it in the spool
        anyway; the caller still gets the error, since the record is not in the store yet.
        """
        await PendingCommit(self, record, timeout, spool_on_failure=spool_on_failure).wait()

    # -- writer thread ---------------------------------------------------------------------------

    def _open(self) -> SqliteWriterStore | PostgresWriterStore:
        if isinstance(self._path, Postgres):
            return PostgresWriterStore(self._path.dsn, SCHEMA, self._busy_timeout)
        return SqliteWriterStore(self._path, SCHEMA, self._busy_timeout)

    def _run(self, ready: "queue.SimpleQueue[DependencyUnavailable | None]") -> None:
        try:
            conn = self.open()
        except DependencyUnavailable as exc:
            ready.put(exc)
            return
        ready.put(None)
        self.serve(conn)

    def open(self) -> SqliteWriterStore | PostgresWriterStore:
        """Open the store, count the spool, sign the opening checkpoint (the writer's thread)."""
        try:
            conn = self._open()
            if self._spool is not None:
                self.spooled = len(self._spool)
            if self._checkpoints is not None:
                self._checkpoint(conn, "open", raise_errors=True)
        except (StoreError, OSError) as exc:
            raise DependencyUnavailable(f"audit store cannot be opened: {exc}", code="audit_unavailable") from None
        return conn

    def serve(self, conn: SqliteWriterStore | PostgresWriterStore, inbox: Inbox | None = None) -> None:
        """The writer's loop, on the calling thread, until a stop sentinel; then the closing checkpoint.

        ``inbox`` replaces the queue ``submit`` fills: the writer process (audit_child) reads its
        socket this way, so a record goes from the socket to the store with no thread in between."""
        if inbox is not None:
            self._inbox = inbox
        stopping = False
        while not stopping:
            item = self._next()
            batch: list[_Item] = []
            flush = False
            while item is not _NOTHING:
                if item is None or item is ABANDONED:
                    self._clean = self._clean and item is None
                    stopping = True
                    break
                if item is FLUSH:
                    flush = True
                elif item is not WAKE:
                    batch.append(item)  # type: ignore[arg-type]
                    if len(batch) >= self._max_batch:
                        break
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    break
            # Outcomes go with a batch, or alone once the linger ran out or when flushed; a wake-up
            # alone prepares them.
            if batch or (self._later and (item is _NOTHING or stopping or flush)):
                self._write(conn, batch, self._take_later(self._max_batch - len(batch)))
                self._active_at = time.monotonic()
            elif self._later:
                self._prepare_later()
            self._duties(conn, stopping)
        while self._later:
            self._write(conn, [], self._take_later(self._max_batch))
        if self._checkpoints is not None:
            self._checkpoint(conn, "clean_stop" if self._clean else "periodic")
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
        it sleeps until woken (then record_later queues WAKE).
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
            return self._inbox.get(timeout=wait)
        except queue.Empty:
            return _NOTHING
        finally:
            self._asleep = False

    def _prepare_later(self) -> None:
        """Woken for outcomes alone (they wait for the next intent's commit): do all of chaining
        them but the hash now, so that commit, which a call waits for, does less. Records are not
        changed once handed over, so what is prepared is what would be chained."""
        ready = self._ready
        for record in list(self._later):  # a copy: in the CLI's writer thread the loop appends to it
            if record.id not in ready:
                ready[record.id] = prepared(record)

    def _take_later(self, limit: int) -> list[AuditRecord]:
        taken = []
        later = self._later
        while later and len(taken) < limit:
            taken.append(later.popleft())
        return taken

    def _insert(self, conn: SqliteWriterStore | PostgresWriterStore, records: list[AuditRecord]) -> None:
        """Chain and commit ``records`` in one transaction; the chain advances only on success."""
        rows, seq, prev = chain_rows(records, self.writer_id, self._seq, self._prev, self._ready)
        conn.append(INSERT_HEAD, INSERT_ROW, rows)
        self._seq, self._prev = seq, prev
        self.committed += len(records)
        self.batches += 1

    def _insert_new(self, conn: SqliteWriterStore | PostgresWriterStore, records: list[AuditRecord]) -> None:
        """``_insert``; if that fails, once more without the records already stored. A gateway sends
        again what a writer killed between its commit and its report never settled, and ids are
        unique: one such record must not fail the fresh ones it shares a batch with."""
        try:
            self._insert(conn, records)
        except StoreError:
            fresh = _unstored(conn, records)  # a StoreError here fails the batch as before
            if len(fresh) == len(records):
                raise
            if fresh:
                self._insert(conn, fresh)
            log.info("audit writer: %s records sent again were already stored", len(records) - len(fresh))

    def _write(self, conn: SqliteWriterStore | PostgresWriterStore, batch: list[_Item], later: list[AuditRecord]) -> None:
        """Commit ``later`` (outcomes, older) and ``batch`` together, then settle the batch's futures."""
        records = later + [record for record, _, _ in batch]
        if not records:
            return
        error: BaseException | None = None
        try:
            self._insert_new(conn, records)
        except StoreError as exc:
            error = exc
            log.error("audit store write failed (%s records): %s", len(records), exc)
            # Outcomes and refusals go to the spool; an intent that failed is a refused call
            # (its refusal record says so), so it is not kept as if it had gone out.
            orphans = later + [record for record, _, keep in batch if keep]
            if orphans:
                self._to_spool(orphans)
        self._settled += len(records)
        if self._on_settled is not None:
            if error is None:
                self._on_settled([record.id for record in records], [])
            else:  # the outcomes are in the spool; the rest are refused (the spooled refusals too)
                self._on_settled([record.id for record in later], [record.id for record, _, _ in batch])
        elif batch:  # outcomes alone: nobody waits, so the event loop is not woken
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
        with self._spool.locked():
            self._replay_locked(conn, self._spool)

    def _replay_locked(self, conn: SqliteWriterStore | PostgresWriterStore, spool: Spool) -> None:
        records = spool.read()
        try:
            if records:
                # A crash between commit and clear would replay twice: skip ids already stored.
                fresh = _unstored(conn, records)
                if fresh:
                    self._insert(conn, fresh)
            spool.clear()
            self.spooled = 0
            log.info("audit spool replayed: %s records", len(records))
            if self._on_settled is not None:
                self._on_settled([], [])  # nothing settled, but the counters changed
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


def _unstored(conn: SqliteWriterStore | PostgresWriterStore, records: list[AuditRecord]) -> list[AuditRecord]:
    """``records`` the store does not hold yet (asked 500 ids at a time), each id once."""
    present: set[str] = set()
    for start in range(0, len(records), 500):
        present |= conn.existing_ids([r.id for r in records[start:start + 500]])
    return list({r.id: r for r in records if r.id not in present}.values())
