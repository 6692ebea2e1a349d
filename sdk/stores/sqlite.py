"""SQLite checkpoint store: WAL, synchronous=NORMAL, busy timeout; several processes may share it.

One autocommit INSERT per step (the physical floor is one INSERT and COMMIT): the fence on the
lease is part of the same statement, so checkpointing costs no extra round trip.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ..errors import StoreUnavailable
from . import Claim
from ._sql import SqlStore

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

class SqliteStore(SqlStore):
    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0) -> None:
        super().__init__()
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
