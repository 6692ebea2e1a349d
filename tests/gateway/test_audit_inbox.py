"""The writer process's inbox (gateway/audit_child.SocketInbox) with proxy workers connected:
each settled record is reported to the socket it came from, only the gateway can stop the writer,
a worker leaving changes nothing for the others, and a worker that stops reading never blocks it."""

from __future__ import annotations

import queue
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from wardgate.gateway.audit import AuditRecord, record_values
from wardgate.gateway.audit_child import COMMIT, LATER, FrameReader, SocketInbox, frame
from wardgate.gateway.audit_writer import ABANDONED, AuditWriter


class Ends:
    def __init__(self, tmp_path: Path) -> None:
        self.audit = AuditWriter(tmp_path / "audit.db")  # never opened: the inbox only hands records to it
        self.gateway, writer_end = socket.socketpair()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.path = str(tmp_path / "audit.sock")
        self.listener.bind(self.path)
        self.listener.listen(8)
        self.listener.setblocking(False)
        self.inbox = SocketInbox(writer_end, self.audit, FrameReader(), [], self.listener)
        self._readers: dict[socket.socket, FrameReader] = {}

    def worker(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.path)
        self.drain()  # the inbox accepts it
        assert self.read(sock)[0][0] == "ready"
        return sock

    def drain(self, timeout: float = 0.2) -> list[Any]:
        """What the inbox has for the writer after one look at its sockets."""
        items = []
        try:
            items.append(self.inbox.get(timeout=timeout))
            while True:
                items.append(self.inbox.get_nowait())
        except queue.Empty:
            pass
        return items

    def read(self, sock: socket.socket, timeout: float = 2.0) -> list[tuple[Any, ...]]:
        reader = self._readers.setdefault(sock, FrameReader())
        sock.settimeout(timeout)
        messages: list[tuple[Any, ...]] = []
        while not messages:
            messages = reader.feed(sock.recv(1 << 20))
        return messages


def record(call_id: str, kind: str = "intent") -> AuditRecord:
    return AuditRecord(call_id=call_id, kind=kind)


@pytest.fixture
def ends(tmp_path: Path) -> Ends:
    return Ends(tmp_path)


def test_each_record_is_reported_to_the_socket_it_came_from(ends: Ends) -> None:
    first, second = ends.worker(), ends.worker()
    mine, theirs, gateways = record("w1"), record("w2"), record("gw")
    first.sendall(frame(("record", COMMIT, record_values(mine))))
    second.sendall(frame(("record", COMMIT, record_values(theirs))))
    ends.gateway.sendall(frame(("record", COMMIT, record_values(gateways))))
    items = []
    deadline = time.monotonic() + 5
    while len(items) < 3 and time.monotonic() < deadline:
        items += ends.drain()
    assert sorted(item[0].call_id for item in items) == ["gw", "w1", "w2"]
    ends.inbox.settled([mine.id, gateways.id], [theirs.id], (3, 1, 0, 0))
    assert ends.read(first) == [("settled", [mine.id], [], (3, 1, 0, 0))]
    assert ends.read(second) == [("settled", [], [theirs.id], (3, 1, 0, 0))]
    assert ends.read(ends.gateway) == [("settled", [gateways.id], [], (3, 1, 0, 0))]


def test_outcomes_from_a_worker_go_to_the_writers_later_list(ends: Ends) -> None:
    worker = ends.worker()
    outcome = record("w1", "outcome")
    worker.sendall(frame(("record", LATER, record_values(outcome))))
    ends.drain()
    ends.inbox.settled([outcome.id], [], (1, 1, 0, 0))
    assert ends.read(worker)[0][1] == [outcome.id]


def test_only_the_gateway_stops_the_writer_and_a_worker_leaving_changes_nothing(ends: Ends) -> None:
    worker, other = ends.worker(), ends.worker()
    worker.sendall(frame(("stop",)))
    assert ends.drain() == []
    sent = record("w1")
    worker.sendall(frame(("record", COMMIT, record_values(sent))))
    worker.close()
    assert [item[0].id for item in ends.drain()] == [sent.id], "what it sent before it left is still written"
    ends.inbox.settled([sent.id], [], (1, 1, 0, 0))  # nobody to tell: the others hear nothing of it
    still = record("w2")
    other.sendall(frame(("record", COMMIT, record_values(still))))
    assert [item[0].id for item in ends.drain()] == [still.id]
    ends.gateway.sendall(frame(("stop",)))
    assert ends.drain() == [None]


def test_the_gateway_going_away_is_abandoned(ends: Ends) -> None:
    ends.worker()
    ends.gateway.close()
    assert ends.drain() == [ABANDONED]


def test_a_worker_that_stops_reading_never_blocks_the_writer(ends: Ends) -> None:
    slow = ends.worker()
    records = [record(f"c{n}") for n in range(20000)]
    taken = []
    for start in range(0, len(records), 200):  # in small bites, so the test's own send never blocks
        slow.sendall(b"".join(frame(("record", COMMIT, record_values(r))) for r in records[start:start + 200]))
        deadline = time.monotonic() + 5
        while len(taken) < start + 200 and time.monotonic() < deadline:
            taken += ends.drain(0.01)
    assert len(taken) == len(records)
    started = time.monotonic()
    for each in records:  # ~1.5 MB of reports it does not read: far past a socket's buffer
        ends.inbox.settled([each.id], [], (0, 0, 0, 0))
    assert time.monotonic() - started < 5, "the writer waited for a worker that does not read"
    reported: list[str] = []
    while len(reported) < len(records):  # once it reads again, the inbox hands it everything, in order
        ends.drain(0.01)
        reported += [record_id for message in ends.read(slow) for record_id in message[1]]
    assert reported == [r.id for r in records]
