"""Revocations in the SQLite ``state.db`` (one machine). No notification channel: polling only,
which on a local WAL database costs one indexed ``SELECT`` per poll."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from .errors import DependencyUnavailable
from .revocations import Revocation, RevocationKind, RevocationStore
from .sqlite import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS revocations (
    revision INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('token', 'run', 'agent', 'key')),
    subject TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    actor TEXT NOT NULL DEFAULT '',
    revoked_at REAL NOT NULL
);
"""


def _row(row: sqlite3.Row) -> Revocation:
    return Revocation(row["revision"], row["kind"], row["subject"], row["reason"], row["actor"], row["revoked_at"])


class SqliteRevocations(RevocationStore):
    def __init__(self, path: Path, timeout: float = 2.0) -> None:
        self._path = path
        self.timeout = timeout
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def open(self) -> None:
        self._conn = await asyncio.to_thread(connect, self._path, schema=SCHEMA, check_same_thread=False)

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _add(self, kind: RevocationKind, subject: str, reason: str, actor: str, revoked_at: float) -> Revocation:
        assert self._conn is not None, "open() first"
        with self._lock:
            cursor = self._conn.execute(
                "INSERT INTO revocations (kind, subject, reason, actor, revoked_at) VALUES (?, ?, ?, ?, ?)",
                (kind, subject, reason, actor, revoked_at),
            )
        assert cursor.lastrowid is not None
        return Revocation(cursor.lastrowid, kind, subject, reason, actor, revoked_at)

    def _after(self, revision: int) -> list[Revocation]:
        assert self._conn is not None, "open() first"
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM revocations WHERE revision > ? ORDER BY revision", (revision,)
            ).fetchall()
        return [_row(r) for r in rows]

    async def add(self, kind: RevocationKind, subject: str, reason: str, actor: str, revoked_at: float) -> Revocation:
        try:
            return await asyncio.to_thread(self._add, kind, subject, reason, actor, revoked_at)
        except sqlite3.Error as exc:
            raise DependencyUnavailable(f"revocation store write failed: {type(exc).__name__}", code="revocation_unavailable") from None

    async def after(self, revision: int) -> list[Revocation]:
        return await asyncio.to_thread(self._after, revision)
