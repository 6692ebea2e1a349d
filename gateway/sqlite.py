"""Opening SQLite files the one way wardgate uses them: WAL, a busy timeout, foreign keys on."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect(path: Path, *, schema: str, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open (creating if needed) ``path`` and apply ``schema`` (idempotent DDL)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=check_same_thread)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a commit survives a process crash; only power loss can drop the last
    # transactions. The audit store flushes explicitly where it must (see audit.py).
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.executescript(schema)
    path.chmod(0o600)
    return conn
