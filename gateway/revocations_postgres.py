"""Revocations in PostgreSQL, shared by every replica.

Each write commits the row and ``pg_notify`` in one transaction, so a replica that LISTENs wakes
as soon as the revocation is durable; replicas also poll (``RevocationView``), so a lost
notification or a dropped LISTEN connection delays a revocation by one poll at most. Every call
carries a timeout; a failure raises and leaves the view's staleness growing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg

from .errors import DependencyUnavailable
from .revocations import Revocation, RevocationKind, RevocationStore

CHANNEL = "wardgate_revocations"
# Replicas may start together; the advisory lock keeps their CREATE TABLEs from racing.
_SCHEMA_LOCK = 0x57617264  # "Ward"
SCHEMA = """
CREATE TABLE IF NOT EXISTS wardgate_revocations (
    revision BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('token', 'run', 'agent', 'key')),
    subject TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    actor TEXT NOT NULL DEFAULT '',
    revoked_at DOUBLE PRECISION NOT NULL
);
"""


def _row(row: asyncpg.Record) -> Revocation:
    return Revocation(row["revision"], row["kind"], row["subject"], row["reason"], row["actor"], row["revoked_at"])


class PostgresRevocations(RevocationStore):
    def __init__(self, dsn: str, timeout: float = 2.0) -> None:
        self._dsn = dsn
        self.timeout = timeout
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self._dsn, timeout=self.timeout, command_timeout=self.timeout)

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._connect()
        return self._conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def open(self) -> None:
        try:
            async with self._lock:
                conn = await self._connection()
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK, timeout=self.timeout)
                    await conn.execute(SCHEMA, timeout=self.timeout)
        except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
            await self._drop()
            raise DependencyUnavailable(
                f"revocation store unreachable: {type(exc).__name__}", code="revocation_unavailable"
            ) from None

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close(timeout=self.timeout)

    async def add(self, kind: RevocationKind, subject: str, reason: str, actor: str, revoked_at: float) -> Revocation:
        try:
            async with self._lock:
                conn = await self._connection()
                async with conn.transaction():
                    revision = await conn.fetchval(
                        "INSERT INTO wardgate_revocations (kind, subject, reason, actor, revoked_at)"
                        " VALUES ($1, $2, $3, $4, $5) RETURNING revision",
                        kind, subject, reason, actor, revoked_at, timeout=self.timeout,
                    )
                    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(revision), timeout=self.timeout)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError) as exc:
            await self._drop()
            raise DependencyUnavailable(
                f"revocation store write failed: {type(exc).__name__}", code="revocation_unavailable"
            ) from None
        return Revocation(revision, kind, subject, reason, actor, revoked_at)

    async def after(self, revision: int) -> list[Revocation]:
        try:
            async with self._lock:
                conn = await self._connection()
                rows = await conn.fetch(
                    "SELECT * FROM wardgate_revocations WHERE revision > $1 ORDER BY revision",
                    revision, timeout=self.timeout,
                )
        except BaseException:
            await self._drop()
            raise
        return [_row(r) for r in rows]

    async def watch(self, wake: Callable[[], None]) -> None:
        conn = await self._connect()
        lost = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(CHANNEL, lambda *_args: wake())
            wake()  # anything added while we were not listening
            while not lost.is_set():
                # A silently dead TCP path would never notify: prove the channel is alive.
                await conn.execute("SELECT 1", timeout=self.timeout)
                try:
                    await asyncio.wait_for(lost.wait(), 1.0)
                except TimeoutError:
                    pass
            raise ConnectionError("LISTEN connection closed")
        finally:
            conn.terminate()
