"""SQLite checkpoint store: WAL, synchronous=NORMAL, busy timeout; several processes may share it.

One autocommit INSERT per step (the physical floor is one INSERT and COMMIT): the fence on the
lease is part of the same statement, so checkpointing costs no extra round trip.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from ..errors import StoreUnavailable
from . import Claim, CheckpointStore, RunRecord, StepRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS wardgate_runs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    owner TEXT,
    lease_until REAL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    output TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS wardgate_steps (
    run_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    output TEXT,
    error TEXT,
    finished REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (run_id, position)
) WITHOUT ROWID;
"""

_CHECKPOINT = """
INSERT INTO wardgate_steps (run_id, position, name, status, output, error, finished, attempts)
SELECT ?, ?, ?, ?, ?, ?, ?, ?
WHERE EXISTS (SELECT 1 FROM wardgate_runs WHERE id = ? AND owner = ? AND status = 'running')
"""


class SqliteStore(CheckpointStore):
    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a process crash (kill -9); only power loss can
            # drop the last transactions. That is the floor the benchmark compares against.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            conn.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"checkpoint store {self.path} cannot be opened: {exc}") from None
        self._conn = conn
        self._lock = threading.Lock()

    def claim(self, run_id: str, owner: str, lease: float, now: float, *, take_from: str | None = None) -> Claim:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT status, owner, lease_until FROM wardgate_runs WHERE id = ?", (run_id,)
                ).fetchone()
                if row is None:
                    conn.execute(
                        "INSERT INTO wardgate_runs (id, status, owner, lease_until, created, updated)"
                        " VALUES (?, 'running', ?, ?, ?, ?)",
                        (run_id, owner, now + lease, now, now),
                    )
                    conn.execute("COMMIT")
                    return Claim(True)
                status, holder, until = row
                if status == "cancelled":
                    conn.execute("ROLLBACK")
                    return Claim(False, holder, until, status)
                free = holder is None or holder == owner or (until is not None and until < now) or holder == take_from
                if not free:
                    conn.execute("ROLLBACK")
                    return Claim(False, holder, until, status)
                conn.execute(
                    "UPDATE wardgate_runs SET status = 'running', owner = ?, lease_until = ?, updated = ? WHERE id = ?",
                    (owner, now + lease, now, run_id),
                )
                conn.execute("COMMIT")
                return Claim(True)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def steps(self, run_id: str) -> list[StepRecord]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT position, name, status, output, error, finished, attempts FROM wardgate_steps"
                " WHERE run_id = ? ORDER BY position",
                (run_id,),
            ).fetchall()
        return [StepRecord(*row) for row in rows]

    def checkpoint(self, run_id: str, owner: str, step: StepRecord) -> bool:
        with self._lock:
            cursor = self._conn.execute(
                _CHECKPOINT,
                (run_id, step.position, step.name, step.status, step.output, step.error, step.finished,
                 step.attempts, run_id, owner),
            )
        return cursor.rowcount == 1

    def renew(self, run_id: str, owner: str, lease_until: float) -> bool:
        with self._lock:
            cursor = self._conn.execute(
                "UPDATE wardgate_runs SET lease_until = ? WHERE id = ? AND owner = ? AND status = 'running'",
                (lease_until, run_id, owner),
            )
        return cursor.rowcount == 1

    def finish(self, run_id: str, owner: str, status: str, output: str | None, error: str | None, now: float) -> bool:
        with self._lock:
            cursor = self._conn.execute(
                "UPDATE wardgate_runs SET status = ?, owner = NULL, lease_until = NULL, output = ?, error = ?,"
                " updated = ? WHERE id = ? AND owner = ? AND status = 'running'",
                (status, output, error, now, run_id, owner),
            )
        return cursor.rowcount == 1

    def _records(self, where: str, params: tuple[object, ...]) -> list[RunRecord]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT r.id, r.status, r.owner, r.lease_until, r.created, r.updated, r.output, r.error,"
                " (SELECT COUNT(*) FROM wardgate_steps s WHERE s.run_id = r.id)"
                f" FROM wardgate_runs r {where}",
                params,
            ).fetchall()
        return [RunRecord(*row) for row in rows]

    def get(self, run_id: str) -> RunRecord | None:
        found = self._records("WHERE r.id = ?", (run_id,))
        return found[0] if found else None

    def list(self, *, status: str | None = None, limit: int = 100) -> list[RunRecord]:
        if status:
            return self._records("WHERE r.status = ? ORDER BY r.updated DESC LIMIT ?", (status, limit))
        return self._records("ORDER BY r.updated DESC LIMIT ?", (limit,))

    def cancel(self, run_id: str, now: float) -> bool:
        with self._lock:
            cursor = self._conn.execute(
                "UPDATE wardgate_runs SET status = 'cancelled', owner = NULL, lease_until = NULL, updated = ?"
                " WHERE id = ? AND status IN ('running', 'failed')",
                (now, run_id),
            )
        return cursor.rowcount == 1

    def close(self) -> None:
        with self._lock:
            self._conn.close()
