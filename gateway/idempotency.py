"""Idempotency records: the first completed response to a keyed request, replayed to retries.

A request carrying ``Idempotency-Key`` is *claimed* in the shared SQLite state before anything is
forwarded (``BEGIN IMMEDIATE``, so every worker and process of the gateway sees one claim), keyed
by (caller scope, key). The scope is the caller's identity (tenant, agent, user): two callers
never see each other's records. The claim carries a fingerprint of the request (method, target,
content type, body); the outcomes of a claim:

    claimed     no record yet: this request is forwarded, its response stored on completion
    replay      same fingerprint, response stored: answer with it, never reach the upstream
    mismatch    same key, different request: refused (422 idempotency_key_reused)
    in_flight   the first attempt has no response yet: wait for it, then 409 idempotency_in_flight
    unknown     the first attempt reached the upstream but its response was lost (the upstream
                connection broke or timed out, the answer was too large to keep, the gateway
                died; an agent that went away mid-call does not lose it: proxy/exchange.py):
                409 idempotency_outcome_unknown until the record expires, because a second
                upstream call could repeat the side effect

Records expire ``ttl`` after they were claimed and are purged lazily.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from .sqlite import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency_records (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'unknown')),
    owner TEXT NOT NULL,
    call_id TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    status INTEGER,
    headers TEXT,
    body BLOB,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_expires ON idempotency_records (expires);
"""


class Outcome(Enum):
    CLAIMED = "claimed"
    REPLAY = "replay"
    MISMATCH = "mismatch"
    IN_FLIGHT = "in_flight"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    call_id: str


@dataclass(frozen=True, slots=True)
class ClaimResult:
    outcome: Outcome
    response: StoredResponse | None = None
    owner: str | None = None


def fingerprint(method: str, scheme: str, host: str, port: int, path: str, content_type: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.upper(), scheme, host.lower(), str(port), path, content_type):
        digest.update(part.encode() + b"\x00")
    digest.update(hashlib.sha256(body).digest())
    return digest.hexdigest()


def process_gone(owner: str | None) -> bool:
    """True when ``owner`` (``host:pid:nonce``) ran on this host and that process no longer exists:
    a gateway that crashed mid-call, whose pending claims can never complete."""
    host, _, rest = (owner or "").partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class IdempotencyStore:
    """Synchronous; call it from a worker thread (``asyncio.to_thread``)."""

    def __init__(self, path: Path) -> None:
        self._conn = connect(path, schema=SCHEMA, check_same_thread=False)
        self._lock = threading.Lock()

    def claim(
        self, scope: str, key: str, print_: str, owner: str, call_id: str, now: float, ttl: float
    ) -> ClaimResult:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "DELETE FROM idempotency_records WHERE scope = ? AND key = ? AND expires <= ?", (scope, key, now)
                )
                row = conn.execute(
                    "SELECT fingerprint, state, owner, status, headers, body, call_id FROM idempotency_records"
                    " WHERE scope = ? AND key = ?",
                    (scope, key),
                ).fetchone()
                if row is None:
                    conn.execute(
                        "INSERT INTO idempotency_records (scope, key, fingerprint, state, owner, call_id, created,"
                        " expires) VALUES (?, ?, ?, 'pending', ?, ?, ?, ?)",
                        (scope, key, print_, owner, call_id, now, now + ttl),
                    )
                    conn.execute("COMMIT")
                    return ClaimResult(Outcome.CLAIMED)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        if row["fingerprint"] != print_:
            return ClaimResult(Outcome.MISMATCH)
        if row["state"] == "done":
            headers = [tuple(pair) for pair in json.loads(row["headers"])]
            return ClaimResult(Outcome.REPLAY, StoredResponse(row["status"], headers, row["body"], row["call_id"]))
        if row["state"] == "unknown":
            return ClaimResult(Outcome.UNKNOWN)
        return ClaimResult(Outcome.IN_FLIGHT, owner=row["owner"])

    def complete(self, scope: str, key: str, owner: str, response: StoredResponse) -> bool:
        with self._lock:
            cursor = self._conn.execute(
                "UPDATE idempotency_records SET state = 'done', status = ?, headers = ?, body = ?"
                " WHERE scope = ? AND key = ? AND owner = ? AND state = 'pending'",
                (response.status, json.dumps(response.headers), response.body, scope, key, owner),
            )
        return cursor.rowcount == 1

    def release(self, scope: str, key: str, owner: str) -> None:
        """Forget a claim whose request never reached the upstream, so a retry may send it."""
        with self._lock:
            self._conn.execute(
                "DELETE FROM idempotency_records WHERE scope = ? AND key = ? AND owner = ? AND state = 'pending'",
                (scope, key, owner),
            )

    def mark_unknown(self, scope: str, key: str, owner: str) -> None:
        with self._lock:
            self._conn.execute(
                "UPDATE idempotency_records SET state = 'unknown'"
                " WHERE scope = ? AND key = ? AND owner = ? AND state = 'pending'",
                (scope, key, owner),
            )

    def purge(self, now: float) -> int:
        with self._lock:
            cursor = self._conn.execute("DELETE FROM idempotency_records WHERE expires <= ?", (now,))
        return cursor.rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()
