"""Pending approvals: calls the policy allowed only with a human's say-so (``require_approval``).

A call whose decision carries the ``require_approval`` obligation is parked here, keyed by the
caller's scope (tenant, agent, user), the request fingerprint and its ``Idempotency-Key``; the
agent gets 403 ``approval_required`` with the approval's id. Re-sending the same request finds
the same approval (so an agent that restarts and re-sends keeps waiting on the one approval).

    pending  ──approve──▶ approved ──(next identical request)──▶ released   forwarded once
        └─────deny─────▶ denied                                             403 approval_denied
        └──(ttl)───────▶ expired                                            a new request parks anew

Releasing is one conditional UPDATE, so among concurrent identical requests (any worker, any
process) exactly one is let through. A released approval of a keyed request lets later retries
with the same key reach the Idempotency addon, which replays the stored response.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import NotFound, Conflict
from .ids import new_id
from .sqlite import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    idempotency_key TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'denied', 'released', 'expired')),
    tenant TEXT, agent TEXT, user TEXT, run TEXT, step TEXT,
    method TEXT, host TEXT, port INTEGER, path TEXT,
    reasons TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    expires REAL NOT NULL,
    decided REAL, decided_by TEXT, note TEXT
);
CREATE INDEX IF NOT EXISTS approvals_match ON approvals (scope, fingerprint, idempotency_key);
CREATE INDEX IF NOT EXISTS approvals_state ON approvals (state, created);
"""

_FIELDS = ("id", "state", "tenant", "agent", "user", "run", "step", "method", "host", "port", "path", "reasons",
           "created", "expires", "decided", "decided_by", "note")


@dataclass(frozen=True, slots=True)
class ParkedCall:
    scope: str
    fingerprint: str
    idempotency_key: str
    tenant: str
    agent: str
    user: str
    run: str | None
    step: str | None
    method: str
    host: str
    port: int
    path: str
    reasons: str


@dataclass(frozen=True, slots=True)
class Gate:
    """What to do with a call that needs approval: ``state`` is pending, denied or released."""

    state: str
    approval_id: str


class ApprovalStore:
    def __init__(self, path: Path) -> None:
        self._conn = connect(path, schema=SCHEMA, check_same_thread=False)
        self._lock = threading.Lock()

    def gate(self, call: ParkedCall, now: float, ttl: float) -> Gate:
        """Find or create the approval for ``call`` and, if it is approved, release it (once)."""
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("UPDATE approvals SET state = 'expired' WHERE state = 'pending' AND expires <= ?", (now,))
                row = conn.execute(
                    "SELECT id, state FROM approvals WHERE scope = ? AND fingerprint = ? AND idempotency_key = ?"
                    " AND state != 'expired' AND NOT (state = 'released' AND idempotency_key = '')"
                    " ORDER BY created DESC LIMIT 1",
                    (call.scope, call.fingerprint, call.idempotency_key),
                ).fetchone()
                if row is None:
                    approval_id = new_id()
                    conn.execute(
                        "INSERT INTO approvals (id, scope, fingerprint, idempotency_key, state, tenant, agent, user, run,"
                        " step, method, host, port, path, reasons, created, expires)"
                        " VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (approval_id, call.scope, call.fingerprint, call.idempotency_key, call.tenant, call.agent,
                         call.user, call.run, call.step, call.method, call.host, call.port, call.path, call.reasons,
                         now, now + ttl),
                    )
                    conn.execute("COMMIT")
                    return Gate("pending", approval_id)
                approval_id, state = row["id"], row["state"]
                if state == "approved":
                    conn.execute("UPDATE approvals SET state = 'released' WHERE id = ? AND state = 'approved'",
                                 (approval_id,))
                    state = "released"
                conn.execute("COMMIT")
                return Gate(state, approval_id)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def decide(self, approval_id: str, approve: bool, by: str, note: str | None, now: float) -> dict[str, Any]:
        with self._lock:
            cursor = self._conn.execute(
                "UPDATE approvals SET state = ?, decided = ?, decided_by = ?, note = ?"
                " WHERE id = ? AND state = 'pending' AND expires > ?",
                ("approved" if approve else "denied", now, by, note, approval_id, now),
            )
        if cursor.rowcount != 1:
            found = self.get(approval_id)
            raise Conflict(f"approval {approval_id} is {found['state']}, not pending", code="approval_not_pending")
        return self.get(approval_id)

    def get(self, approval_id: str) -> dict[str, Any]:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {', '.join(_FIELDS)} FROM approvals WHERE id = ?", (approval_id,)
            ).fetchone()
        if row is None:
            raise NotFound(f"no approval {approval_id}", code="approval_not_found")
        return dict(row)

    def list(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        now = time.time()
        with self._lock:
            self._conn.execute("UPDATE approvals SET state = 'expired' WHERE state = 'pending' AND expires <= ?", (now,))
            where, params = ("WHERE state = ?", (state, limit)) if state else ("", (limit,))
            rows = self._conn.execute(
                f"SELECT {', '.join(_FIELDS)} FROM approvals {where} ORDER BY created DESC LIMIT ?", params
            ).fetchall()
        return [dict(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
