"""The audit store's indexes serve the queries operators run: an agent's newest records come off an
index in id order, not by fetching all of that agent's records and sorting them (4.3 s for the
busiest agent of a million records, before). The writer builds that index when it opens a new or
small store; a large old store keeps its old index (building the new one would hold the write lock
for seconds) and the log says how to migrate it."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from audit_backends import open_store
from wardgate.gateway.audit import SCHEMA, AuditQuery, query_sql
from wardgate.gateway.audit_store import PostgresWriterStore, SqliteWriterStore
from wardgate.gateway.sqlite import connect

OLD_INDEX = "CREATE INDEX IF NOT EXISTS audit_agent ON audit_records (agent, time);"
ROW = "INSERT INTO audit_records (id, call_id, kind, time, agent, writer, seq, prev_hash, hash) VALUES (?, ?, 'intent', 0, 'a', 'w', ?, '', '')"


def plan(conn: sqlite3.Connection, query: AuditQuery) -> str:
    sql, params = query_sql(query)
    return " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))


def indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit_records'")}


def old_store(path: Path, records: int) -> None:
    conn = connect(path, schema=SCHEMA + OLD_INDEX)
    conn.executemany(ROW, [(f"id-{n}", f"call-{n}", n) for n in range(records)])
    conn.close()


@pytest.mark.parametrize("oldest_first", [False, True])
def test_an_agents_records_come_off_the_index_in_id_order(tmp_path: Path, oldest_first: bool) -> None:
    SqliteWriterStore(tmp_path / "audit.db", SCHEMA, 5.0).close()
    conn = connect(tmp_path / "audit.db", schema=SCHEMA)
    found = plan(conn, AuditQuery(agent="busy-bot", oldest_first=oldest_first))
    assert "audit_agent_id" in found, found
    assert "TEMP B-TREE" not in found, found


def test_a_reader_never_builds_it(tmp_path: Path) -> None:
    connect(tmp_path / "audit.db", schema=SCHEMA).close()
    assert "audit_agent_id" not in indexes(tmp_path / "audit.db")


def test_a_small_store_made_with_the_old_index_gets_the_new_one(tmp_path: Path) -> None:
    old_store(tmp_path / "audit.db", 3)
    assert indexes(tmp_path / "audit.db") >= {"audit_agent"}
    SqliteWriterStore(tmp_path / "audit.db", SCHEMA, 5.0, agent_index_limit=3).close()
    found = indexes(tmp_path / "audit.db")
    assert "audit_agent_id" in found and "audit_agent" not in found


def test_a_large_old_store_keeps_its_index_and_the_log_says_how_to_migrate(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    old_store(tmp_path / "audit.db", 4)
    with caplog.at_level(logging.WARNING, logger="wardgate.audit"):
        SqliteWriterStore(tmp_path / "audit.db", SCHEMA, 5.0, agent_index_limit=3).close()
    found = indexes(tmp_path / "audit.db")
    assert "audit_agent" in found and "audit_agent_id" not in found
    assert "CREATE INDEX IF NOT EXISTS audit_agent_id" in caplog.text


def test_a_postgresql_store_the_writer_creates_has_it(tmp_path: Path) -> None:
    with open_store("postgres", tmp_path / "home") as store:
        assert store.dsn is not None
        PostgresWriterStore(store.dsn, SCHEMA, 5.0).close()
        raw = store.connect()
        try:
            names = {row["indexname"] for row in raw.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'audit_records'")}
        finally:
            raw.close()
    assert "audit_agent_id" in names
