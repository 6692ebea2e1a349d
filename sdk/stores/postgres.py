"""PostgreSQL checkpoint store (psycopg 3): for runs that move between machines.

Same contract as the SQLite store: the lease fence is part of the checkpoint INSERT, and a claim
locks the run's row (``SELECT ... FOR UPDATE``) so two claimants serialise.
"""

from __future__ import annotations


import psycopg

from ..errors import StoreUnavailable
from . import Claim
from ._sql import SqlStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS wardgate_runs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    owner TEXT,
    lease_until DOUBLE PRECISION,
    created DOUBLE PRECISION NOT NULL,
    updated DOUBLE PRECISION NOT NULL,
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
    finished DOUBLE PRECISION NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (run_id, position)
);
"""


class PostgresStore(SqlStore):
    placeholder = "%s"

    def __init__(self, dsn: str, *, connect_timeout: float = 10.0) -> None:
        super().__init__()
        try:
            self._conn = psycopg.connect(dsn, autocommit=True, connect_timeout=int(max(1, connect_timeout)))
            with self._conn.transaction():
                # Concurrent first-time set-up from several processes: serialise the DDL.
                self._conn.execute("SELECT pg_advisory_xact_lock(7262657061)")
                self._conn.execute(SCHEMA)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"checkpoint store (PostgreSQL) cannot be opened: {type(exc).__name__}") from None

    def claim(self, run_id: str, owner: str, lease: float, now: float, *, take_from: str | None = None) -> Claim:
        with self._lock, self._conn.transaction():
            conn = self._conn
            conn.execute(
                "INSERT INTO wardgate_runs (id, status, owner, lease_until, created, updated)"
                " VALUES (%s, 'running', NULL, NULL, %s, %s) ON CONFLICT (id) DO NOTHING",
                (run_id, now, now),
            )
            status, holder, until = conn.execute(
                "SELECT status, owner, lease_until FROM wardgate_runs WHERE id = %s FOR UPDATE", (run_id,)
            ).fetchone()
            if status == "cancelled":
                return Claim(False, holder, until, status)
            free = holder is None or holder == owner or (until is not None and until < now) or holder == take_from
            if not free:
                return Claim(False, holder, until, status)
            conn.execute(
                "UPDATE wardgate_runs SET status = 'running', owner = %s, lease_until = %s, updated = %s WHERE id = %s",
                (owner, now + lease, now, run_id),
            )
            return Claim(True)
