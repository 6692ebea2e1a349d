"""PostgreSQL checkpoint store (psycopg 3): for runs that move between machines.

Same contract as the SQLite store: the lease fence is part of the checkpoint INSERT, and a claim
locks the run's row (``SELECT ... FOR UPDATE``) so two claimants serialise.
"""

from __future__ import annotations

import threading

import psycopg

from ..errors import StoreUnavailable
from . import Claim, CheckpointStore, RunRecord, StepRecord

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


class PostgresStore(CheckpointStore):
    def __init__(self, dsn: str, *, connect_timeout: float = 10.0) -> None:
        try:
            self._conn = psycopg.connect(dsn, autocommit=True, connect_timeout=int(max(1, connect_timeout)))
            with self._conn.transaction():
                # Concurrent first-time set-up from several processes: serialise the DDL.
                self._conn.execute("SELECT pg_advisory_xact_lock(7262657061)")
                self._conn.execute(SCHEMA)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"checkpoint store (PostgreSQL) cannot be opened: {type(exc).__name__}") from None
        self._lock = threading.Lock()

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

    def steps(self, run_id: str) -> list[StepRecord]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT position, name, status, output, error, finished, attempts FROM wardgate_steps"
                " WHERE run_id = %s ORDER BY position",
                (run_id,),
            ).fetchall()
        return [StepRecord(*row) for row in rows]

    def checkpoint(self, run_id: str, owner: str, step: StepRecord) -> bool:
        with self._lock:
            cursor = self._conn.execute(
                "INSERT INTO wardgate_steps (run_id, position, name, status, output, error, finished, attempts)"
                " SELECT %s, %s, %s, %s, %s, %s, %s, %s WHERE EXISTS"
                " (SELECT 1 FROM wardgate_runs WHERE id = %s AND owner = %s AND status = 'running')",
                (run_id, step.position, step.name, step.status, step.output, step.error, step.finished,
                 step.attempts, run_id, owner),
            )
        return cursor.rowcount == 1

    def renew(self, run_id: str, owner: str, lease_until: float) -> bool:
        with self._lock:
            cursor = self._conn.execute(
                "UPDATE wardgate_runs SET lease_until = %s WHERE id = %s AND owner = %s AND status = 'running'",
                (lease_until, run_id, owner),
            )
        return cursor.rowcount == 1

    def finish(self, run_id: str, owner: str, status: str, output: str | None, error: str | None, now: float) -> bool:
        with self._lock:
            cursor = self._conn.execute(
                "UPDATE wardgate_runs SET status = %s, owner = NULL, lease_until = NULL, output = %s, error = %s,"
                " updated = %s WHERE id = %s AND owner = %s AND status = 'running'",
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
        found = self._records("WHERE r.id = %s", (run_id,))
        return found[0] if found else None

    def list(self, *, status: str | None = None, limit: int = 100) -> list[RunRecord]:
        if status:
            return self._records("WHERE r.status = %s ORDER BY r.updated DESC LIMIT %s", (status, limit))
        return self._records("ORDER BY r.updated DESC LIMIT %s", (limit,))

    def cancel(self, run_id: str, now: float) -> bool:
        with self._lock:
            cursor = self._conn.execute(
                "UPDATE wardgate_runs SET status = 'cancelled', owner = NULL, lease_until = NULL, updated = %s"
                " WHERE id = %s AND status IN ('running', 'failed')",
                (now, run_id),
            )
        return cursor.rowcount == 1

    def close(self) -> None:
        with self._lock:
            self._conn.close()
