"""The statements both SQL stores share; each backend adds its connection, DDL and claim.

Statements are written with ``?`` placeholders and rewritten once per store for drivers that use
``%s`` (psycopg). Every method takes the store's lock: one connection is shared by threads.
"""

from __future__ import annotations

import threading
from typing import Any

from . import CheckpointStore, RunRecord, StepRecord

_STATEMENTS = {
    "steps": "SELECT position, name, status, output, error, finished, attempts FROM wardgate_steps"
             " WHERE run_id = ? ORDER BY position",
    # The lease fence is part of the INSERT: a writer that lost the run records nothing.
    "checkpoint": "INSERT INTO wardgate_steps (run_id, position, name, status, output, error, finished, attempts)"
                  " SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS"
                  " (SELECT 1 FROM wardgate_runs WHERE id = ? AND owner = ? AND status = 'running')",
    "renew": "UPDATE wardgate_runs SET lease_until = ? WHERE id = ? AND owner = ? AND status = 'running'",
    "finish": "UPDATE wardgate_runs SET status = ?, owner = NULL, lease_until = NULL, output = ?, error = ?,"
              " updated = ? WHERE id = ? AND owner = ? AND status = 'running'",
    "records": "SELECT r.id, r.status, r.owner, r.lease_until, r.created, r.updated, r.output, r.error,"
               " (SELECT COUNT(*) FROM wardgate_steps s WHERE s.run_id = r.id) FROM wardgate_runs r ",
    "cancel": "UPDATE wardgate_runs SET status = 'cancelled', owner = NULL, lease_until = NULL, updated = ?"
              " WHERE id = ? AND status IN ('running', 'failed')",
}


class SqlStore(CheckpointStore):
    placeholder = "?"
    _conn: Any

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sql = {name: self.q(text) for name, text in _STATEMENTS.items()}

    def q(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    def _write(self, name: str, params: tuple[object, ...]) -> bool:
        with self._lock:
            return self._conn.execute(self._sql[name], params).rowcount == 1

    def steps(self, run_id: str) -> list[StepRecord]:
        with self._lock:
            rows = self._conn.execute(self._sql["steps"], (run_id,)).fetchall()
        return [StepRecord(*row) for row in rows]

    def checkpoint(self, run_id: str, owner: str, step: StepRecord) -> bool:
        return self._write("checkpoint", (run_id, step.position, step.name, step.status, step.output, step.error,
                                          step.finished, step.attempts, run_id, owner))

    def renew(self, run_id: str, owner: str, lease_until: float) -> bool:
        return self._write("renew", (lease_until, run_id, owner))

    def finish(self, run_id: str, owner: str, status: str, output: str | None, error: str | None, now: float) -> bool:
        return self._write("finish", (status, output, error, now, run_id, owner))

    def _records(self, where: str, params: tuple[object, ...]) -> list[RunRecord]:
        with self._lock:
            rows = self._conn.execute(self._sql["records"] + self.q(where), params).fetchall()
        return [RunRecord(*row) for row in rows]

    def get(self, run_id: str) -> RunRecord | None:
        found = self._records("WHERE r.id = ?", (run_id,))
        return found[0] if found else None

    def list(self, *, status: str | None = None, limit: int = 100) -> list[RunRecord]:
        if status:
            return self._records("WHERE r.status = ? ORDER BY r.updated DESC LIMIT ?", (status, limit))
        return self._records("ORDER BY r.updated DESC LIMIT ?", (limit,))

    def cancel(self, run_id: str, now: float) -> bool:
        return self._write("cancel", (now, run_id))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
