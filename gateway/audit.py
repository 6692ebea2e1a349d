"""The audit store: one record per decision and per outcome, durably committed, chained per writer.

Every call gets a ``call_id`` (returned to the agent as ``X-Wardgate-Audit-Id``) and records:

- ``intent``   an allowed call, committed *before* anything is forwarded (no record, no forwarding);
- ``outcome``  what happened after forwarding: status, bytes, latencies, error;
- ``refusal``  a call that ended at the gateway: unauthenticated, denied, or a dependency down;
- ``admin``    an operator action on identity: a revocation, an agent disabled (see revoker.py).

Writes go through one writer thread that commits whatever is queued in one transaction (group
commit), so durability costs one commit per batch rather than per call. Each writer process keeps
a SHA-256 chain over the canonical bytes of its records (``prev_hash`` → ``hash``), so edits,
deletions and reordering are detectable later.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import queue
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from .errors import DependencyUnavailable
from .ids import new_id
from .sqlite import connect

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
    writer TEXT NOT NULL, seq INTEGER NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL,
    UNIQUE (writer, seq)
);
CREATE INDEX IF NOT EXISTS audit_call ON audit_records (call_id);
CREATE INDEX IF NOT EXISTS audit_time ON audit_records (time);
CREATE INDEX IF NOT EXISTS audit_agent ON audit_records (agent, time);
"""

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
    id: str = field(default_factory=new_id)

    def canonical(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()


_RECORD_FIELDS = [f.name for f in fields(AuditRecord)]
_COLUMNS = _RECORD_FIELDS + ["writer", "seq", "prev_hash", "hash"]
_INSERT = f"INSERT INTO audit_records ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"


def chain_hash(prev_hash: str, record: AuditRecord) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + record.canonical()).hexdigest()


class AuditWriter:
    """Appends records from one gateway process through a single group-commit thread."""

    def __init__(self, path: Path, *, max_batch: int = 512) -> None:
        self._path = path
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[AuditRecord, asyncio.Future[None] | None] | None] = queue.SimpleQueue()
        self.writer_id = new_id()
        self._seq = 0
        self._prev = GENESIS
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.pending = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        ready: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="audit-writer", daemon=True)
        self._thread.start()
        error = ready.get()
        if error is not None:
            raise DependencyUnavailable(f"audit store cannot be opened: {error}", code="audit_unavailable")

    async def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join, 10.0)
            self._thread = None

    def submit(self, record: AuditRecord) -> asyncio.Future[None]:
        """Queue ``record``; the future resolves once it is committed (or fails)."""
        assert self._loop is not None, "AuditWriter.start() first"
        future: asyncio.Future[None] = self._loop.create_future()
        self.pending += 1
        self._queue.put((record, future))
        return future

    def record_later(self, record: AuditRecord) -> None:
        """Queue ``record`` without waiting for its commit (outcomes: the response goes on)."""
        self.pending += 1
        self._queue.put((record, None))

    async def commit(self, record: AuditRecord, timeout: float) -> None:
        """Commit ``record`` durably or raise ``audit_unavailable``: the caller must not proceed."""
        future = self.submit(record)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            raise DependencyUnavailable("audit record could not be committed in time", code="audit_unavailable") from None

    def _run(self, ready: "queue.SimpleQueue[BaseException | None]") -> None:
        try:
            conn = connect(self._path, schema=SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            ready.put(exc)
            return
        ready.put(None)
        stopping = False
        while not stopping:
            batch = []
            item = self._queue.get()
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
        conn.close()

    def _write(self, conn: sqlite3.Connection, batch: list[tuple[AuditRecord, asyncio.Future[None] | None]]) -> None:
        seq, prev = self._seq, self._prev
        rows = []
        for record, _ in batch:
            seq += 1
            digest = chain_hash(prev, record)
            values = [getattr(record, name) for name in _RECORD_FIELDS]
            values[_RECORD_FIELDS.index("reasons")] = json.dumps(record.reasons)
            rows.append((*values, self.writer_id, seq, prev, digest))
            prev = digest
        error: BaseException | None = None
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_INSERT, rows)
            conn.execute("COMMIT")
            self._seq, self._prev = seq, prev
        except sqlite3.Error as exc:
            error = exc
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._resolve, [f for _, f in batch], error)

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
    agent: str | None = None
    user: str | None = None
    tenant: str | None = None
    host: str | None = None
    call_id: str | None = None
    since: float | None = None
    limit: int = 100


def query_records(path: Path, q: AuditQuery) -> list[dict[str, Any]]:
    """Newest first. Opens its own read connection: readers never block the writer under WAL."""
    if not path.exists():
        return []
    clauses, params = [], []
    for column in ("agent", "user", "tenant", "host", "call_id"):
        value = getattr(q, column)
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if q.since is not None:
        clauses.append("time >= ?")
        params.append(q.since)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    conn = connect(path, schema=SCHEMA)
    try:
        rows = conn.execute(
            f"SELECT * FROM audit_records {where} ORDER BY id DESC LIMIT ?", (*params, max(1, min(q.limit, 10000)))
        ).fetchall()
    finally:
        conn.close()
    result = []
    for row in rows:
        item = dict(row)
        item["reasons"] = json.loads(item["reasons"])
        result.append(item)
    return result
