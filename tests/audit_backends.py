"""The audit store under test, SQLite or PostgreSQL: import ``store`` into a test module to run it on both.

PostgreSQL comes from ``scripts/postgres.sh`` (``WARDGATE_TEST_PG_DSN``); each test gets a fresh
database, dropped afterwards. Without the DSN the PostgreSQL cases skip locally and fail under CI=true.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support import require
from wardgate.gateway.audit_store import Postgres, Source

BACKENDS = ["sqlite", "postgres"]


@dataclass
class Store:
    backend: str
    home: Path
    dsn: str | None = None

    @property
    def source(self) -> Source:
        return Postgres(self.dsn) if self.dsn else self.home / "audit.db"

    @property
    def env(self) -> dict[str, str]:
        """Variables that point the CLI at this store (merge into a copy of os.environ)."""
        if not self.dsn:
            return {"WARDGATE_AUDIT__BACKEND": "sqlite"}
        return {"WARDGATE_AUDIT__BACKEND": "postgres", "WARDGATE_AUDIT__POSTGRES_DSN": self.dsn}

    def environ(self, **extra: str) -> dict[str, str]:
        """A full environment for a CLI subprocess: WARDGATE_TEST_* belong to the harness, and
        wardgate refuses unknown WARDGATE_* settings."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("WARDGATE_TEST_")}
        return {**base, "WARDGATE_HOME": str(self.home), **self.env, **extra}

    @property
    def config(self) -> str:
        """The same as wardgate.toml lines for an [audit] section."""
        if not self.dsn:
            return 'backend = "sqlite"\n'
        return f'backend = "postgres"\npostgres_dsn = "{self.dsn}"\n'

    def connect(self) -> "Raw":
        """A direct connection, as an attacker (or a maintenance job) with database access has."""
        return Raw(self)


class Raw:
    """Autocommit connection taking ``?`` placeholders on both backends; rows allow ``row["col"]``."""

    def __init__(self, store: Store) -> None:
        self.postgres = store.dsn is not None
        if self.postgres:
            import psycopg
            from psycopg.rows import dict_row

            self._conn: Any = psycopg.connect(store.dsn, autocommit=True, row_factory=dict_row)
        else:
            self._conn = sqlite3.connect(store.home / "audit.db", isolation_level=None, timeout=10)
            self._conn.row_factory = sqlite3.Row

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self._conn.execute(sql.replace("?", "%s") if self.postgres else sql, params)

    def close(self) -> None:
        self._conn.close()


def _pg_base() -> str | None:
    return os.environ.get("WARDGATE_TEST_PG_DSN")


@contextlib.contextmanager
def open_store(backend: str, home: Path) -> Iterator[Store]:
    """A fresh store: the SQLite file under ``home``, or a new PostgreSQL database (dropped after)."""
    home.mkdir(parents=True, exist_ok=True)
    if backend == "sqlite":
        yield Store("sqlite", home)
        return
    base = _pg_base()
    require("PostgreSQL (run under scripts/postgres.sh: WARDGATE_TEST_PG_DSN)", base is not None)
    import psycopg
    from psycopg.conninfo import make_conninfo

    assert base
    name = f"wg_audit_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield Store("postgres", home, make_conninfo(base, dbname=name))
    finally:
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with open_store(request.param, tmp_path / "home") as opened:
        yield opened


def agent_ready(gateway: Any, upstream_url: str, agent: str) -> None:
    """Wait until the gateway's agent directory knows ``agent`` (created after start-up, it can take
    up to the directory's refresh interval): a 407 means not yet."""
    import time

    import requests

    proxy = gateway.proxy_with(gateway.mint(agent))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if requests.get(f"{upstream_url}/allowed/warm-up", proxies={"http": proxy}, timeout=10).status_code != 407:
            return
        time.sleep(0.2)
    raise AssertionError(f"agent {agent} never became known to the gateway")
