"""Tamper with a real audit database file in every way we claim to detect; `wardgate audit verify` must say so.

Runs on both backends (SQLite file, PostgreSQL database). Each case: a writer (the real AuditWriter, group commit, signed checkpoints, external sink file)
writes 12 calls and stops cleanly; the test then edits the SQLite file directly, as an attacker
with write access to the database would, and runs the real CLI.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from audit_backends import Raw, Store, store  # noqa: F401  (the fixture)
from wardgate.gateway.audit import AuditRecord, chain_hash, record_from_row
from wardgate.gateway.audit_checkpoint import CheckpointSink
from wardgate.gateway.audit_keys import load_or_create_signer
from wardgate.gateway.audit_writer import AuditWriter, CheckpointPolicy
from wardgate.gateway.cli import cli

CALLS = 12


async def write_store(store: Store, sink: Path, *, calls: int = CALLS, stop: bool = True, dangling: int = 0) -> AuditWriter:
    policy = CheckpointPolicy(load_or_create_signer(store.home / "audit-keys"), every=8, interval=3600, idle=3600,
                              sink=CheckpointSink(sink, None))
    writer = AuditWriter(store.source, checkpoints=policy)
    writer.start()
    for number in range(calls):
        base = dict(call_id=f"call-{number:03}", agent="bot", user="alice", tenant="acme", method="GET",
                    host="example.test", port=443, path=f"/p/{number}", decision="allow")
        await writer.commit(AuditRecord(kind="intent", **base), 5)
        if number < calls - dangling:
            await writer.commit(AuditRecord(kind="outcome", status=200, latency_total_ms=1, **base), 5)
    if stop:
        await writer.stop()
    return writer


def run_verify(store: Store, *extra: str) -> tuple[int, dict, str]:
    """The real CLI command, in-process (a subprocess per case would double the suite's time)."""
    env: dict[str, str | None] = {**store.env, "WARDGATE_TEST_PG_DSN": None}

    def call(*args: str) -> Any:
        return CliRunner().invoke(cli, ["--home", str(store.home), "audit", "verify", *args], env=env, catch_exceptions=False)

    as_json = call("--json", *extra)
    text = call(*extra)
    assert as_json.output and as_json.exit_code == text.exit_code, as_json.output + text.output
    return as_json.exit_code, json.loads(as_json.output), text.output


def rows(conn: Raw) -> list[Any]:
    return conn.execute("SELECT * FROM audit_records ORDER BY seq").fetchall()


def insert(conn: Raw, values: dict[str, Any]) -> None:
    columns = ", ".join(f'"{c}"' for c in values)
    conn.execute(f"INSERT INTO audit_records ({columns}) VALUES ({', '.join('?' * len(values))})", list(values.values()))


def edit_field(conn: Raw) -> None:
    conn.execute("UPDATE audit_records SET status = 500 WHERE seq = 6")


def delete_middle(conn: Raw) -> None:
    conn.execute("DELETE FROM audit_records WHERE seq IN (5, 6)")


def delete_and_renumber(conn: Raw) -> None:
    conn.execute("DELETE FROM audit_records WHERE seq = 5")
    conn.execute("UPDATE audit_records SET seq = seq + 1000 WHERE seq > 5")
    conn.execute("UPDATE audit_records SET seq = seq - 1001 WHERE seq > 1000")


def swap_two(conn: Raw) -> None:
    conn.execute("UPDATE audit_records SET seq = -1 WHERE seq = 3")
    conn.execute("UPDATE audit_records SET seq = 3 WHERE seq = 4")
    conn.execute("UPDATE audit_records SET seq = 4 WHERE seq = -1")


def insert_in_middle(conn: Raw) -> None:
    """A made-up record slipped in at seq 4 with a correct-looking hash, later ones shifted."""
    before = rows(conn)[2]
    forged = record_from_row(rows(conn)[3])
    forged.id, forged.call_id, forged.path = "01FORGED", "forged", "/forged"
    conn.execute("UPDATE audit_records SET seq = seq + 1000 WHERE seq >= 4")
    conn.execute("UPDATE audit_records SET seq = seq - 999 WHERE seq > 1000")
    values = dict(before)
    values.update({k: getattr(forged, k) for k in ("id", "call_id", "path")})
    values.update(seq=4, prev_hash=before["hash"], hash=chain_hash(before["hash"], forged))
    insert(conn, values)


def foreign_writer(conn: Raw) -> None:
    """A whole made-up chain under a writer id no checkpoint vouches for."""
    row = dict(rows(conn)[0])
    record = record_from_row(row)
    record.id, record.call_id = "01INVENTED", "invented"
    row.update(id=record.id, call_id=record.call_id, writer="01FAKEWRITER", seq=1, prev_hash="0" * 64,
               hash=chain_hash("0" * 64, record))
    insert(conn, row)


def truncate_tail(conn: Raw) -> None:
    conn.execute("DELETE FROM audit_records WHERE seq > 20")


def truncate_tail_and_checkpoints(conn: Raw) -> None:
    """Cut the tail and every database checkpoint that would reveal it: only the sink still knows."""
    conn.execute("DELETE FROM audit_records WHERE seq > 20")
    conn.execute("DELETE FROM audit_checkpoints WHERE seq > 16")


def rewrite_whole_chain(conn: Raw) -> None:
    """Edit a record and recompute every hash after it: the chain is consistent again, the signatures are not."""
    conn.execute("UPDATE audit_records SET status = 201 WHERE seq = 6")
    prev = "0" * 64
    for row in rows(conn):
        digest = chain_hash(prev, record_from_row(row))
        conn.execute("UPDATE audit_records SET prev_hash = ?, hash = ? WHERE id = ?", (prev, digest, row["id"]))
        prev = digest


def forge_checkpoint(conn: Raw) -> None:
    conn.execute("UPDATE audit_checkpoints SET seq = 22 WHERE kind = 'clean_stop'")


def append_after_stop(conn: Raw) -> None:
    last = rows(conn)[-1]
    record = record_from_row(last)
    record.id, record.call_id = "01APPENDED", "appended"
    values = dict(last)
    values.update(id=record.id, call_id=record.call_id, seq=last["seq"] + 1, prev_hash=last["hash"],
                  hash=chain_hash(last["hash"], record))
    insert(conn, values)


CASES: list[tuple[str, Callable[[Raw], None], set[str]]] = [
    ("edited field", edit_field, {"edited"}),
    ("deleted records", delete_middle, {"deleted"}),
    ("deleted and renumbered", delete_and_renumber, {"inserted_or_reordered", "checkpoint_mismatch", "truncated"}),
    ("two records swapped", swap_two, {"inserted_or_reordered"}),
    ("record inserted", insert_in_middle, {"inserted_or_reordered", "checkpoint_mismatch", "after_clean_stop"}),
    ("made-up writer", foreign_writer, {"unsigned_chain"}),
    ("tail truncated", truncate_tail, {"truncated"}),
    ("tail and checkpoints removed", truncate_tail_and_checkpoints, {"truncated", "checkpoint_removed"}),
    ("whole chain rewritten", rewrite_whole_chain, {"checkpoint_mismatch"}),
    ("checkpoint forged", forge_checkpoint, {"forged_checkpoint"}),
    ("record appended after clean stop", append_after_stop, {"after_clean_stop"}),
]


@pytest.fixture
async def clean_store(store: Store, tmp_path: Path) -> tuple[Store, Path]:
    sink = tmp_path / "elsewhere" / "checkpoints.jsonl"
    await write_store(store, sink)
    return store, sink


def kinds(report: dict) -> set[str]:
    found = {f["kind"] for f in report["findings"] if f["severity"] == "invalid"}
    for chain in report["chains"]:
        found |= {f["kind"] for f in chain["findings"] if f["severity"] == "invalid"}
    return found


async def test_untouched_store_verifies(clean_store: tuple[Store, Path]) -> None:
    st, sink = clean_store
    code, report, text = run_verify(st, "--sink", str(sink))
    assert code == 0, text
    assert report["valid"] and kinds(report) == set()
    [chain] = report["chains"]
    assert chain["records"] == 2 * CALLS and chain["status"] == "closed"
    assert chain["last_external_seq"] == 2 * CALLS  # the clean stop reached the sink
    assert "VALID" in text and "limit:" in text


@pytest.mark.parametrize(("name", "tamper", "expected"), CASES, ids=[c[0] for c in CASES])
async def test_tampering_is_reported(clean_store: tuple[Store, Path], name: str, tamper, expected: set[str]) -> None:  # noqa: ANN001
    st, sink = clean_store
    conn = st.connect()
    tamper(conn)
    conn.close()
    code, report, text = run_verify(st, "--sink", str(sink))
    assert code == 1, text
    assert expected <= kinds(report), text
    assert "INVALID" in text


async def test_without_the_sink_cut_tail_and_checkpoints_go_unnoticed_and_the_limit_says_so(clean_store: tuple[Store, Path]) -> None:
    st, _ = clean_store
    conn = st.connect()
    truncate_tail_and_checkpoints(conn)
    conn.execute("DELETE FROM audit_checkpoints WHERE kind = 'clean_stop'")
    conn.close()
    code, report, text = run_verify(st)
    assert code == 0  # the documented limit: nothing outside the database remembers the tail
    assert "no external checkpoint sink" in report["limit"]
    assert "no clean stop" in text  # ... but it no longer looks like a clean stop


async def test_a_checkpoint_signed_by_another_key_is_forged(tmp_path: Path, clean_store: tuple[Store, Path]) -> None:
    st, sink = clean_store
    other = load_or_create_signer(tmp_path / "other-keys")
    code, report, text = run_verify(st, "--public-key", str(tmp_path / "other-keys" / "checkpoint.pub"))
    assert code == 1
    assert "forged_checkpoint" in kinds(report) and other.key_id not in text


async def test_interrupted_writer_and_dangling_intents_are_warnings(store: Store, tmp_path: Path) -> None:
    st, sink = store, tmp_path / "sink.jsonl"
    writer = await write_store(store, sink, calls=5, stop=False, dangling=2)
    await asyncio.sleep(0)
    code, report, text = run_verify(st, "--sink", str(sink))
    await writer.stop()
    assert code == 0, text
    warnings = {f["kind"] for f in report["findings"]} | {f["kind"] for c in report["chains"] for f in c["findings"]}
    assert {"interrupted", "intent_without_outcome"} <= warnings
    assert "call-003" in text and "no clean stop" in text
