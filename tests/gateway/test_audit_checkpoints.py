"""When the writer signs checkpoints (every N records, when idle, on clean stop) and where they go."""

from __future__ import annotations

import asyncio
import json
import stat
import sys
from pathlib import Path

from audit_backends import Store, store  # noqa: F401  (the fixture)
from wardgate.gateway.audit import AuditRecord
from wardgate.gateway.audit_checkpoint import Checkpoint, CheckpointSink
from wardgate.gateway.audit_keys import load_or_create_signer, load_public_keys, signature_valid
from wardgate.gateway.audit_writer import AuditWriter, CheckpointPolicy


def checkpoints(st: Store) -> list[tuple[str, int]]:
    conn = st.connect()
    rows = conn.execute("SELECT kind, seq FROM audit_checkpoints ORDER BY id").fetchall()
    conn.close()
    return [(r["kind"], r["seq"]) for r in rows]


async def test_every_n_records_and_clean_stop(store: Store, tmp_path: Path) -> None:
    policy = CheckpointPolicy(load_or_create_signer(store.home / "keys"), every=3, interval=3600, idle=3600)
    writer = AuditWriter(store.source, checkpoints=policy)
    writer.start()
    for number in range(7):
        await writer.commit(AuditRecord(call_id=f"c{number}", kind="intent"), 5)
    await writer.stop()
    assert checkpoints(store) == [("open", 0), ("periodic", 3), ("periodic", 6), ("clean_stop", 7)]


async def test_idle_checkpoint_covers_a_quiet_tail_and_reaches_file_and_command_sinks(store: Store, tmp_path: Path) -> None:
    file_sink, command_out = tmp_path / "other-volume" / "cp.jsonl", tmp_path / "command.jsonl"
    command = [sys.executable, "-c", f"import sys; open({str(command_out)!r}, 'a').write(sys.stdin.read())"]
    policy = CheckpointPolicy(load_or_create_signer(store.home / "keys"), every=1000, interval=3600, idle=0.2,
                              sink=CheckpointSink(file_sink, command))
    writer = AuditWriter(store.source, checkpoints=policy)
    writer.start()
    for number in range(2):
        await writer.commit(AuditRecord(call_id=f"c{number}", kind="intent"), 5)
    for _ in range(100):
        if ("idle", 2) in checkpoints(store):
            break
        await asyncio.sleep(0.05)
    assert ("idle", 2) in checkpoints(store)
    await writer.stop()
    keys = load_public_keys([store.home / "keys"])
    for sink in (file_sink, command_out):
        lines = [Checkpoint.from_mapping(json.loads(line)) for line in sink.read_text().splitlines()]
        assert [(cp.kind, cp.seq) for cp in lines] == [("open", 0), ("idle", 2), ("clean_stop", 2)]
        assert all(signature_valid(keys[cp.key_id], cp.signature, cp.payload()) for cp in lines)


def test_the_signing_key_is_private_and_stable(tmp_path: Path) -> None:
    first = load_or_create_signer(tmp_path / "keys")
    again = load_or_create_signer(tmp_path / "keys")
    assert first.key_id == again.key_id
    assert stat.S_IMODE((tmp_path / "keys" / "checkpoint.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert list(load_public_keys([tmp_path / "keys"])) == [first.key_id]
