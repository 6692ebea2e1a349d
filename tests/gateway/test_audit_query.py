"""`wardgate audit query|tail|export|prune|usage` against a real store written by the real AuditWriter, on both backends."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from audit_backends import Store, store  # noqa: F401  (the fixture)
from wardgate.gateway.audit import AuditRecord
from wardgate.gateway.audit_checkpoint import CheckpointSink
from wardgate.gateway.audit_keys import load_or_create_signer
from wardgate.gateway.audit_writer import AuditWriter, CheckpointPolicy
from wardgate.gateway.cli import cli

NOW = time.time()
DAY = 86400.0

# (call_id, agent, user, tenant, run, host, method, decision, status, path, age in seconds)
CALLS = [
    ("c-old", "bot-a", "alice", "acme", None, "api.example.com", "GET", "allow", 200, "/v1/old", 10 * DAY),
    ("c-a1", "bot-a", "alice", "acme", "run-1", "api.example.com", "GET", "allow", 200, "/v1/items", 3600),
    ("c-a2", "bot-a", "bob", "acme", "run-1", "api.example.com", "POST", "allow", 201, "/v1/items/new", 1800),
    ("c-b1", "bot-b", "carol", "globex", None, "llm.example.net", "POST", "allow", 500, "/v1/chat", 600),
    ("c-b2", "bot-b", "carol", "globex", "run-2", "evil.example.org", "GET", "deny", 403, "/exfil", 60),
]


def writer_for(st: Store, sink: Path | None = None) -> AuditWriter:
    policy = CheckpointPolicy(load_or_create_signer(st.home / "audit-keys"), every=4, interval=3600, idle=3600,
                              sink=CheckpointSink(sink, None) if sink else None)
    return AuditWriter(st.source, checkpoints=policy)


async def fill(st: Store, sink: Path | None = None) -> None:
    writer = writer_for(st, sink)
    writer.start()
    for call_id, agent, user, tenant, run, host, method, decision, status, path, age in CALLS:
        base = dict(call_id=call_id, agent=agent, user=user, tenant=tenant, run=run, host=host, method=method,
                    decision=decision, path=path, time=NOW - age)
        if decision == "deny":
            await writer.commit(AuditRecord(kind="refusal", status=status, error="policy_denied", **base), 5)
        else:
            await writer.commit(AuditRecord(kind="intent", **base), 5)
            await writer.commit(AuditRecord(kind="outcome", status=status, **{**base, "time": NOW - age + 0.5}), 5)
    await writer.stop()


@pytest.fixture
async def home(store: Store, tmp_path: Path) -> Store:
    await fill(store, tmp_path / "sink" / "checkpoints.jsonl")
    return store


def run(st: Store, *args: str) -> tuple[int, str]:
    env: dict[str, str | None] = {**st.env, "WARDGATE_TEST_PG_DSN": None}
    result = CliRunner().invoke(cli, ["--home", str(st.home), "audit", *args], catch_exceptions=False, env=env)
    return result.exit_code, result.output


QUERIES = [
    ([], {"c-old", "c-a1", "c-a2", "c-b1", "c-b2"}),
    (["--agent", "bot-a"], {"c-old", "c-a1", "c-a2"}),
    (["--user", "carol"], {"c-b1", "c-b2"}),
    (["--tenant", "globex"], {"c-b1", "c-b2"}),
    (["--run", "run-1"], {"c-a1", "c-a2"}),
    (["--host", "llm.example.net"], {"c-b1"}),
    (["--method", "post"], {"c-a2", "c-b1"}),
    (["--decision", "deny"], {"c-b2"}),
    (["--status", "500"], {"c-b1"}),
    (["--kind", "refusal"], {"c-b2"}),
    (["--call", "c-a2"], {"c-a2"}),
    (["--path", "items"], {"c-a1", "c-a2"}),
    (["--since", "2h"], {"c-a1", "c-a2", "c-b1", "c-b2"}),
    (["--since", "45m", "--until", "5m"], {"c-a2", "c-b1"}),
    (["--agent", "bot-a", "--since", "1d", "--method", "GET"], {"c-a1"}),
    (["--tenant", "nobody"], set()),
]


@pytest.mark.parametrize(("args", "expected"), QUERIES, ids=[" ".join(a) or "all" for a, _ in QUERIES])
async def test_query_filters(home: Store, args: list[str], expected: set[str]) -> None:
    code, out = run(home, "query", "--format", "jsonl", "--limit", "100", *args)
    assert code == 0, out
    assert {json.loads(line)["call_id"] for line in out.splitlines()} == expected


async def test_output_formats_agree(home: Store) -> None:
    _, as_json = run(home, "query", "--format", "json", "--agent", "bot-b")
    _, as_jsonl = run(home, "query", "--format", "jsonl", "--agent", "bot-b")
    _, as_csv = run(home, "query", "--format", "csv", "--agent", "bot-b")
    _, as_table = run(home, "query", "--agent", "bot-b")
    records = json.loads(as_json)
    assert [json.loads(line) for line in as_jsonl.splitlines()] == records
    rows = list(csv.DictReader(io.StringIO(as_csv)))
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    # Records written in the same millisecond may come in either order, so compare each row with its
    # own record: an empty CSV cell is a null in JSON.
    assert [(r["kind"], r["status"]) for r in rows] == [(r["kind"], "" if r["status"] is None else str(r["status"]))
                                                        for r in records]
    assert {r["status"] for r in rows} == {"", "500", "403"}
    assert as_table.splitlines()[0].split()[:3] == ["TIME", "CALL_ID", "KIND"] and "evil.example.org" in as_table


async def test_bad_filters_are_refused(home: Store) -> None:
    from wardgate.gateway.errors import BadRequest

    with pytest.raises(BadRequest):
        run(home, "query", "--since", "yesterday")
    with pytest.raises(BadRequest):
        run(home, "query", "--status", "ok")


async def test_export_is_every_record_oldest_first_as_json_lines(home: Store, tmp_path: Path) -> None:
    code, _ = run(home, "export", "--output", str(tmp_path / "siem.jsonl"))
    assert code == 0
    lines = [json.loads(line) for line in (tmp_path / "siem.jsonl").read_text().splitlines()]
    assert len(lines) == 9 and [r["id"] for r in lines] == sorted(r["id"] for r in lines)
    assert all({"call_id", "agent", "user", "tenant", "hash", "writer", "seq"} <= set(r) for r in lines)


async def test_prune_keeps_the_rest_verifiable(home: Store, tmp_path: Path) -> None:
    sink = tmp_path / "sink" / "checkpoints.jsonl"
    env = home.environ(WARDGATE_AUDIT__CHECKPOINT_SINK_FILE=str(sink))
    done = subprocess.run([sys.executable, "-m", "wardgate.gateway.cli", "--home", str(home.home), "audit", "prune",
                           "--before", "5d", "--yes"], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "pruned 2 records" in done.stdout
    code, out = run(home, "query", "--format", "jsonl")
    assert "c-old" not in out and "c-a1" in out
    assert '"kind":"prune"' in sink.read_text()
    verify = subprocess.run([sys.executable, "-m", "wardgate.gateway.cli", "--home", str(home.home), "audit", "verify",
                             "--sink", str(sink)], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=home.environ())
    assert verify.returncode == 0, verify.stdout
    assert "pruned through seq 2" in verify.stdout
    # The same cut without the signed prune checkpoint is a deletion.
    conn = home.connect()
    conn.execute("DELETE FROM audit_checkpoints WHERE kind = 'prune'")
    conn.close()
    bad = subprocess.run([sys.executable, "-m", "wardgate.gateway.cli", "--home", str(home.home), "audit", "verify"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path, env=home.environ())
    assert bad.returncode == 1 and "deleted" in bad.stdout


async def test_tail_follow_prints_new_records(home: Store, tmp_path: Path) -> None:
    out = tmp_path / "tail.out"
    with open(out, "w") as handle:
        follower = subprocess.Popen(
            [sys.executable, "-u", "-m", "wardgate.gateway.cli", "--home", str(home.home), "audit", "tail", "-f",
             "-n", "1", "--interval", "0.1", "--kind", "intent"],
            stdout=handle, stderr=subprocess.STDOUT, cwd=tmp_path, env=home.environ(),
        )

    def seen() -> list[str]:
        return [json.loads(line)["call_id"] for line in out.read_text().splitlines() if line.startswith("{")]

    async def wait_for(count: int) -> None:
        deadline = time.monotonic() + 30
        while len(seen()) < count and follower.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    try:
        await wait_for(1)  # the backlog: the latest intent; it is now polling
        assert seen() == ["c-b1"], out.read_text()
        writer = writer_for(home)
        writer.start()
        for number in range(3):
            await writer.commit(AuditRecord(call_id=f"live-{number}", kind="intent", agent="bot-z"), 5)
        await writer.commit(AuditRecord(call_id="other", kind="outcome", agent="bot-y"), 5)
        await writer.commit(AuditRecord(call_id="last", kind="intent", agent="bot-y"), 5)
        await writer.stop()
        await wait_for(5)
        assert seen() == ["c-b1", "live-0", "live-1", "live-2", "last"], out.read_text()
    finally:
        follower.kill()
        follower.wait(10)


async def test_usage_sums_tokens_per_group(store: Store) -> None:
    writer = writer_for(store)
    writer.start()
    for call_id, user, model, used in (("u1", "ann", "gpt-x", (10, 5)), ("u2", "ann", "claude-x", (7, 3)), ("u3", "ben", "gpt-x", (1, 1))):
        usage = json.dumps({"provider": "openai", "model": model, "input_tokens": used[0], "output_tokens": used[1],
                            "total_tokens": sum(used)})
        await writer.commit(AuditRecord(call_id=call_id, kind="outcome", user=user, agent="bot", usage=usage, status=200), 5)
    await writer.commit(AuditRecord(call_id="u4", kind="outcome", user="cyd", agent="bot", status=200), 5)  # no usage
    await writer.stop()
    code, out = run(store, "usage", "--by", "user", "--format", "json")
    assert code == 0, out
    assert json.loads(out) == [
        {"user": "ann", "calls": 2, "input_tokens": 17, "output_tokens": 8, "total_tokens": 25},
        {"user": "ben", "calls": 1, "input_tokens": 1, "output_tokens": 1, "total_tokens": 2},
    ]
    code, out = run(store, "usage", "--by", "model", "--format", "json", "--since", "1h")
    assert {row["model"]: row["total_tokens"] for row in json.loads(out)} == {"gpt-x": 17, "claude-x": 10}
