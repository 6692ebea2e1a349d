"""Where audit records live: SQLite (one file, WAL) or PostgreSQL (shared by several replicas).

Two halves, both small:

- writer stores (:class:`SqliteWriterStore`, :class:`PostgresWriterStore`), used only by the audit
  writer thread: append a batch in one transaction, add a checkpoint, find already-stored ids;
- :func:`reader`, a DB-API connection plus the :class:`Dialect` that papers over the few SQL
  differences, used by query, verify, usage and prune.

Column names are always quoted: ``user`` is a reserved word in PostgreSQL.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .sqlite import connect

log = logging.getLogger("wardgate.audit")


@dataclass(frozen=True, slots=True)
class Postgres:
    dsn: str

    def __repr__(self) -> str:  # the DSN may hold a password
        return "Postgres(dsn=***)"


Source = Path | Postgres


class StoreError(Exception):
    """The store refused or could not be reached; the message never holds credentials."""


def quoted(columns: list[str]) -> str:
    return ", ".join(f'"{c}"' for c in columns)


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str

    def sql(self, text: str) -> str:
        """Statements are written with ``?`` placeholders; psycopg wants ``%s``."""
        return text.replace("?", "%s") if self.name == "postgres" else text

    def contains(self, column: str) -> str:
        return f'instr("{column}", ?) > 0' if self.name == "sqlite" else f'strpos("{column}", ?) > 0'

    def json_number(self, column: str, key: str) -> str:
        if self.name == "sqlite":
            return f"json_extract(\"{column}\", '$.{key}')"
        return f"(\"{column}\"::jsonb ->> '{key}')::bigint"

    def json_text(self, column: str, key: str) -> str:
        if self.name == "sqlite":
            return f"json_extract(\"{column}\", '$.{key}')"
        return f"(\"{column}\"::jsonb ->> '{key}')"


SQLITE, POSTGRES = Dialect("sqlite"), Dialect("postgres")


def postgres_schema(sqlite_schema: str) -> str:
    """The SQLite DDL in PostgreSQL's words (kept derived so the two cannot drift apart)."""
    return (sqlite_schema.replace(" REAL", " DOUBLE PRECISION")
            .replace(" user TEXT", ' "user" TEXT')
            .replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
            .replace("seq INTEGER", "seq BIGINT")
            .replace("bytes_in INTEGER, bytes_out INTEGER", "bytes_in BIGINT, bytes_out BIGINT"))


def _pg_connect(dsn: str, schema: str, *, timeout: float = 10.0) -> Any:
    import psycopg
    from psycopg.rows import dict_row

    try:
        conn = psycopg.connect(dsn, connect_timeout=max(1, int(timeout)), row_factory=dict_row, autocommit=True)
    except psycopg.Error as exc:
        raise StoreError(f"PostgreSQL audit store unreachable ({type(exc).__name__})") from None
    try:
        # Never wait forever on a lock someone else holds (readers included).
        conn.execute(f"SET lock_timeout = {int(timeout * 1000)}")
        present = conn.execute("SELECT to_regclass('audit_records') IS NOT NULL AND to_regclass('audit_checkpoints') IS NOT NULL AS ok").fetchone()
        if present["ok"]:
            return conn  # DDL, even IF NOT EXISTS, would queue behind a writer's table lock
        with conn.transaction():
            # Replicas starting together must not race on CREATE TABLE IF NOT EXISTS.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('wardgate_audit_schema'))")
            for statement in postgres_schema(schema).split(";"):
                if statement.strip():
                    conn.execute(statement)
    except psycopg.Error as exc:
        conn.close()
        raise StoreError(f"PostgreSQL audit store not usable ({type(exc).__name__}: {exc.diag.message_primary})") from None
    return conn


@contextlib.contextmanager
def reader(source: Source, schema: str, *, read_only: bool = False) -> Iterator[tuple[Any, Dialect]]:
    """A connection for reading (and for prune's one transaction) and its dialect."""
    if isinstance(source, Postgres):
        conn = _pg_connect(source.dsn, schema)
        try:
            yield conn, POSTGRES
        finally:
            conn.close()
        return
    if read_only:
        conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=5.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
    else:
        conn = connect(source, schema=schema)
    try:
        yield conn, SQLITE
    finally:
        conn.close()


def store_exists(source: Source) -> bool:
    return isinstance(source, Postgres) or source.exists()


_PG_PARAMETERS = 65535  # the protocol's limit on bound parameters per statement


class _MultiRowInserts:
    """``INSERT ... VALUES (...), (...), ...`` texts by row count, built once each."""

    def __init__(self) -> None:
        self._texts: dict[tuple[str, str, int], str] = {}

    def get(self, head: str, row: str, count: int) -> str:
        key = (head, row, count)
        text = self._texts.get(key)
        if text is None:
            text = self._texts[key] = head + ", ".join([row] * count)
        return text


# An agent's newest records read off an index in id order (`audit query --agent`): with the
# (agent, time) index stores had before, SQLite fetched all of an agent's records and sorted them,
# 4.3 s for the busiest agent of a million records. Not in the schema every reader applies:
# building it holds the store's write lock, about 2 s per million records. The writer builds it
# when it opens a store of at most AGENT_INDEX_LIMIT records (a new one, or a small old one) and
# drops the old index then; a larger store keeps the old one, and a warning says how to migrate.
AGENT_INDEX = "CREATE INDEX IF NOT EXISTS audit_agent_id ON audit_records (agent, id)"
AGENT_INDEX_LIMIT = 2_000_000


class SqliteWriterStore:
    dialect = SQLITE

    def __init__(self, path: Path, schema: str, busy_timeout: float, agent_index_limit: int = AGENT_INDEX_LIMIT) -> None:
        try:
            self._conn = connect(path, schema=schema)
            # Group commit makes a full flush per batch affordable: committed means on disk.
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            self._agent_index(path, agent_index_limit)
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from None
        self._variables = self._conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._statements = _MultiRowInserts()

    def _agent_index(self, path: Path, limit: int) -> None:
        conn = self._conn
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'audit_agent_id'").fetchone():
            return
        records = conn.execute("SELECT max(rowid) FROM audit_records").fetchone()[0] or 0  # at least the count
        if records > limit:
            log.warning("audit store %s: queries by agent sort all of that agent's records; with the gateway "
                        "stopped, run: sqlite3 %s '%s; DROP INDEX IF EXISTS audit_agent' (about 2 s per million "
                        "records; this store has up to %s)", path, path, AGENT_INDEX, records)
            return
        conn.executescript(f"{AGENT_INDEX};\nDROP INDEX IF EXISTS audit_agent;")

    def append(self, head: str, row: str, rows: list[list[Any]]) -> None:
        """Insert ``rows`` atomically: ``head`` is ``INSERT INTO t (columns) VALUES``, ``row`` one row's marks.

        One multi-row statement in autocommit mode is its own transaction (taking the write lock as
        BEGIN IMMEDIATE does), so a batch costs one sqlite3_step: the sqlite3 module releases and
        re-takes the GIL around each step, and on a busy event loop every re-take can wait a whole
        switch interval. executemany steps once per row, plus BEGIN and COMMIT.
        """
        if len(rows) * len(rows[0]) > self._variables:
            self.transaction([(head + row, rows)])
            return
        try:
            self._conn.execute(self._statements.get(head, row, len(rows)), list(itertools.chain.from_iterable(rows)))
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from None

    def transaction(self, statements: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        """Run ``(sql, rows)`` pairs (executemany) in one write transaction."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for sql, rows in statements:
                conn.executemany(sql, rows)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(str(exc)) from None

    def existing_ids(self, ids: list[str]) -> set[str]:
        try:
            marks = ",".join("?" * len(ids))
            return {row[0] for row in self._conn.execute(f'SELECT "id" FROM audit_records WHERE "id" IN ({marks})', ids)}
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from None

    def close(self) -> None:
        self._conn.close()


class PostgresWriterStore:
    """One connection per writer; each batch is one transaction (synchronous_commit: durable)."""

    dialect = POSTGRES

    def __init__(self, dsn: str, schema: str, busy_timeout: float) -> None:
        # A store this writer creates gets the agent index with its tables (_pg_connect applies the
        # schema only to a database without them); docs/audit.md says how to add it to an older one.
        self._dsn, self._schema, self._timeout = dsn, f"{schema};\n{AGENT_INDEX};", busy_timeout
        self._conn: Any = None
        self._statements = _MultiRowInserts()
        self._connect()

    def _connect(self) -> None:
        self._conn = _pg_connect(self._dsn, self._schema, timeout=self._timeout)
        # A locked table or a stuck server must not hold a batch longer than a caller waits.
        ms = int(self._timeout * 1000)
        self._conn.execute(f"SET lock_timeout = {ms}")
        self._conn.execute(f"SET statement_timeout = {ms}")

    def transaction(self, statements: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        import psycopg

        try:
            if self._conn is None or self._conn.closed:
                self._connect()
            with self._conn.transaction():
                with self._conn.cursor() as cursor:
                    for sql, rows in statements:
                        cursor.executemany(POSTGRES.sql(sql), rows)
        except psycopg.Error as exc:
            if self._conn is not None and self._conn.broken:
                self._conn = None  # reconnect on the next batch
            raise StoreError(f"{type(exc).__name__}") from None

    def append(self, head: str, row: str, rows: list[list[Any]]) -> None:
        """Insert ``rows`` atomically, as one statement (autocommit: its own transaction, one round trip)."""
        import psycopg

        if len(rows) * len(rows[0]) > _PG_PARAMETERS:
            self.transaction([(head + row, rows)])
            return
        try:
            if self._conn is None or self._conn.closed:
                self._connect()
            self._conn.execute(POSTGRES.sql(self._statements.get(head, row, len(rows))),
                               list(itertools.chain.from_iterable(rows)))
        except psycopg.Error as exc:
            if self._conn is not None and self._conn.broken:
                self._conn = None  # reconnect on the next batch
            raise StoreError(f"{type(exc).__name__}") from None

    def existing_ids(self, ids: list[str]) -> set[str]:
        import psycopg

        try:
            if self._conn is None or self._conn.closed:
                self._connect()
            rows = self._conn.execute('SELECT "id" FROM audit_records WHERE "id" = ANY(%s)', (ids,)).fetchall()
        except psycopg.Error as exc:
            raise StoreError(type(exc).__name__) from None
        return {row["id"] for row in rows}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
