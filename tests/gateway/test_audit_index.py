"""The audit store's indexes serve the queries operators run: an agent's newest records come off an
index in id order, not by fetching all of that agent's records and sorting them (4.3 s for the
busiest agent of a million records, before). A store made before that index gets it on open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from wardgate.gateway.audit import SCHEMA, AuditQuery, query_sql
from wardgate.gateway.sqlite import connect

OLD_INDEX = "CREATE INDEX IF NOT EXISTS audit_agent ON audit_records (agent, time);"


def plan(conn: sqlite3.Connection, query: AuditQuery) -> str:
    sql, params = query_sql(query)
    return " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))


def indexes(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit_records'")}


@pytest.mark.parametrize("oldest_first", [False, True])
def test_an_agents_records_come_off_the_index_in_id_order(tmp_path: Path, oldest_first: bool) -> None:
    conn = connect(tmp_path / "audit.db", schema=SCHEMA)
    found = plan(conn, AuditQuery(agent="busy-bot", oldest_first=oldest_first))
    assert "audit_agent_id" in found, found
    assert "TEMP B-TREE" not in found, found


def test_a_store_made_with_the_old_index_gets_the_new_one(tmp_path: Path) -> None:
    old_schema = SCHEMA.split("-- An agent's newest records")[0] + OLD_INDEX
    connect(tmp_path / "audit.db", schema=old_schema).close()
    with sqlite3.connect(tmp_path / "audit.db") as before:
        assert "audit_agent" in indexes(before) and "audit_agent_id" not in indexes(before)
    conn = connect(tmp_path / "audit.db", schema=SCHEMA)
    assert "audit_agent_id" in indexes(conn) and "audit_agent" not in indexes(conn)
    assert "TEMP B-TREE" not in plan(conn, AuditQuery(agent="busy-bot"))
