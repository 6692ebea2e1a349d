"""The audit store: one record per decision and per outcome, durably committed, chained per writer.

Every call gets a ``call_id`` (returned to the agent as ``X-Wardgate-Audit-Id``) and records:

- ``intent``   an allowed call, committed *before* anything is forwarded (no record, no forwarding);
- ``outcome``  what happened after forwarding: status, bytes, latencies, error;
- ``refusal``  a call that ended at the gateway: unauthenticated, denied, or a dependency down;
- ``admin``    an operator action on identity: a revocation, an agent disabled (see revoker.py).

Writes go through one writer thread (audit_writer) that commits whatever is queued in one
transaction (group commit), so durability costs one commit per batch rather than per call. Each writer process keeps
a SHA-256 chain over the canonical bytes of its records (``prev_hash`` → ``hash``), so edits,
deletions and reordering are detectable later; signed checkpoints (audit_checkpoint) pin the chain
so truncation and whole-chain rewrites are detectable too (audit_verify). Records the store cannot
take after the fact (outcomes) go to a local spool (audit_spool) and are replayed.
"""

from __future__ import annotations

import hashlib
import json
import operator
import time
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from .audit_checkpoint import CHECKPOINT_SCHEMA
from .audit_store import SQLITE, Dialect, Source, quoted, reader, store_exists
from .ids import new_id

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
-- The (agent, id) index is built by the writer, not here (audit_store.AGENT_INDEX).
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
INSERT_HEAD = f"INSERT INTO audit_records ({quoted(_COLUMNS)}) VALUES "
INSERT_ROW = f"({', '.join('?' * len(_COLUMNS))})"

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


def record_values(record: AuditRecord) -> tuple[Any, ...]:
    """The record's fields in declaration order: ``AuditRecord(*values)`` rebuilds it."""
    return _VALUES(record)  # type: ignore[no-any-return]


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


def prepared(record: AuditRecord) -> tuple[list[Any], bytes]:
    """The record's normalised values and canonical bytes: all of chaining it but the hash, which
    needs the record before it."""
    values = _normalized(record)
    return values, _canonical(values)


def chain_rows(records: list[AuditRecord], writer: str, seq: int, prev: str,
               ready: dict[str, tuple[list[Any], bytes]] | None = None) -> tuple[list[list[Any]], int, str]:
    """``records`` as rows for INSERT_HEAD/INSERT_ROW, chained on from ``seq``/``prev``; a record
    whose id is in ``ready`` (taken out of it) uses what :func:`prepared` gave for it earlier.

    Returns the rows and the chain's new ``seq`` and head hash."""
    rows = []
    for record in records:
        early = ready.pop(record.id, None) if ready else None
        values, canonical = early if early is not None else prepared(record)
        digest = hashlib.sha256(prev.encode() + b"\n" + canonical).hexdigest()
        seq += 1
        values[_REASONS_AT] = json.dumps(values[_REASONS_AT])
        values += (writer, seq, prev, digest)
        rows.append(values)
        prev = digest
    return rows, seq, prev


def record_from_row(row: Any) -> AuditRecord:
    """The record as it was hashed, rebuilt from a stored row (``reasons`` is stored as JSON)."""
    values = {name: row[name] for name in _RECORD_FIELDS}
    values["reasons"] = json.loads(values["reasons"]) if isinstance(values["reasons"], str) else values["reasons"]
    return AuditRecord(**values)


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
