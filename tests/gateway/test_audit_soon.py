"""Outcomes sent when nothing waits are committed at once (audit_child: SOON), not with the next batch.

At light load no batch is coming for an outcome to share: the writer would hold it until the next
call's intent and that call would wait for both. A gateway with none of its commits in flight sends
its outcomes as SOON and the writer commits them on their own; with commits in flight it sends
LATER and they ride with the next batch as before.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
from pathlib import Path

import pytest

from wardgate.gateway.audit import AuditRecord, record_values
from wardgate.gateway.audit_child import COMMIT, LATER, SOON, FrameReader, SocketInbox, frame
from wardgate.gateway.audit_process import AuditLink
from wardgate.gateway.audit_writer import AuditWriter, PendingCommit


def call_records(number: int) -> tuple[AuditRecord, AuditRecord]:
    base = dict(call_id=f"call-{number}", agent="bot", user="alice", tenant="acme", method="GET",
                host="example.test", port=443, path=f"/p/{number}", decision="allow")
    return (AuditRecord(kind="intent", **base),  # type: ignore[arg-type]
            AuditRecord(kind="outcome", status=200, bytes_out=12, latency_total_ms=1.5, **base))  # type: ignore[arg-type]


class WriterLoop:
    """The writer process's loop (AuditWriter.serve on its socket inbox) on a thread, with a linger
    of 30 s: an outcome committed before then was committed because of its flag."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "audit.db"
        self.gateway, writer_end = socket.socketpair()
        self._reports = FrameReader()
        holder: list[SocketInbox] = []
        self.audit = AuditWriter(self.path, linger=30.0,
                                 on_settled=lambda ok, failed: holder[0].settled(ok, failed, (0, 0, 0, 0)))
        holder.append(SocketInbox(writer_end, self.audit, FrameReader(), []))
        self._thread = threading.Thread(target=lambda: self.audit.serve(self.audit.open(), holder[0]))
        self._thread.start()

    def send(self, flag: int, record: AuditRecord) -> None:
        self.gateway.sendall(frame(("record", flag, record_values(record))))

    def settled(self, record: AuditRecord, timeout: float = 10.0) -> bool:
        """Whether the writer reports ``record`` settled within ``timeout``."""
        self.gateway.settimeout(timeout)
        try:
            while True:
                for message in self._reports.feed(self.gateway.recv(1 << 16)):
                    if message[0] == "settled" and record.id in message[1]:
                        return True
        except TimeoutError:
            return False

    def stop(self) -> list[tuple[str, str]]:
        """Stop the loop; the stored records' (call_id, kind) in chain order."""
        self.gateway.sendall(frame(("stop",)))
        self._thread.join(10)
        self.gateway.close()
        with sqlite3.connect(self.path) as db:
            return db.execute("SELECT call_id, kind FROM audit_records ORDER BY seq").fetchall()


@pytest.mark.parametrize(("flag", "alone"), [(SOON, True), (LATER, False)])
def test_only_a_soon_outcome_is_committed_on_its_own_at_once(tmp_path: Path, flag: int, alone: bool) -> None:
    loop = WriterLoop(tmp_path)
    try:
        intent, outcome = call_records(1)
        loop.send(COMMIT, intent)
        assert loop.settled(intent)
        batches = loop.audit.batches
        loop.send(flag, outcome)
        # SOON: committed without waiting for the 30 s linger or another batch; LATER: held for one
        assert loop.settled(outcome, timeout=10.0 if alone else 0.5) is alone
        following, _ = call_records(2)
        loop.send(COMMIT, following)
        assert loop.settled(following)
        # SOON: the next intent then commits alone; LATER: the outcome rides with it
        assert loop.audit.batches == batches + (2 if alone else 1)
    finally:
        stored = loop.stop()
    assert stored == [("call-1", "intent"), ("call-1", "outcome"), ("call-2", "intent")]


def test_a_gateway_sends_soon_only_with_none_of_its_commits_in_flight(tmp_path: Path) -> None:
    """A worker's link (AuditLink) to a stand-in writer on a Unix socket: the flag on the wire."""

    async def scenario() -> list[int]:
        path = str(tmp_path / "audit.sock")
        flags: list[int] = []
        got_three = asyncio.Event()

        async def writer(reader: asyncio.StreamReader, stream: asyncio.StreamWriter) -> None:
            stream.write(frame(("ready", "stand-in", (0, 0, 0, 0))))
            frames = FrameReader()
            while data := await reader.read(1 << 16):
                flags.extend(message[1] for message in frames.feed(data) if message[0] == "record")
                if len(flags) >= 3:
                    got_three.set()

        server = await asyncio.start_unix_server(writer, path)
        link = AuditLink({"spool": str(tmp_path / "spool")}, path, stop_timeout=0.1)
        await link.start()
        try:
            first_intent, first_outcome = call_records(1)
            link.record_later(first_outcome)  # nothing in flight
            pending = PendingCommit(link, first_intent, timeout=30.0)  # an intent awaited: in flight
            second_outcome = call_records(2)[1]
            link.record_later(second_outcome)
            await asyncio.wait_for(got_three.wait(), 10)
            assert not pending.done
            return flags
        finally:
            await link.stop()
            server.close()

    assert asyncio.run(scenario()) == [SOON, COMMIT, LATER]
