"""The audit spool: appends are durable lines, and an append waits while a replay holds the spool,
so a record appended mid-replay is never cleared with the records before it."""

from __future__ import annotations

import threading
from pathlib import Path

from wardgate.gateway.audit import AuditRecord
from wardgate.gateway.audit_spool import Spool


def record(call_id: str) -> AuditRecord:
    return AuditRecord(call_id=call_id, kind="outcome", status=200)


def test_appended_records_read_back_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    spool.append([record("a"), record("b")])
    spool.append([record("c")])
    assert [r.call_id for r in spool.read()] == ["a", "b", "c"] and len(spool) == 3
    spool.clear()
    assert spool.read() == [] and len(spool) == 0


def test_an_append_during_a_replay_survives_the_clear(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    spool.append([record("before")])
    appended = threading.Event()

    def append_late() -> None:  # another process's gateway spooling at stop, say
        Spool(spool.path).append([record("late")])
        appended.set()

    with spool.locked():  # what the writer holds from read to clear
        replayed = spool.read()
        late = threading.Thread(target=append_late)
        late.start()
        assert not appended.wait(0.3), "the append went in while the replay held the spool"
        spool.clear()
    late.join(5)
    assert [r.call_id for r in replayed] == ["before"]
    assert [r.call_id for r in spool.read()] == ["late"], "the late record is still there for the next replay"
