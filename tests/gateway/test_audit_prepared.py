"""Outcomes the writer prepares while it waits for the next intent chain exactly as if they had not been.

The writer is woken for outcomes alone and does all of chaining them but the hash then
(audit.prepared), so the next intent's commit, which a call waits for, does less. What it stores
must hash exactly as a record read back from the store does, and nothing prepared may stay behind.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from pathlib import Path

from wardgate.gateway.audit import GENESIS, AuditRecord, chain_hash, chain_rows, prepared, record_from_row, record_values
from wardgate.gateway.audit_child import COMMIT, LATER, FrameReader, SocketInbox, frame
from wardgate.gateway.audit_writer import AuditWriter


def call_records(number: int) -> tuple[AuditRecord, AuditRecord]:
    base = dict(call_id=f"call-{number}", agent="bot", user="alice", tenant="acme", method="GET",
                host="example.test", port=443, path=f"/p/{number}", decision="allow", reasons=["ok"])
    return (AuditRecord(kind="intent", **base),
            AuditRecord(kind="outcome", status=200, bytes_out=12, latency_total_ms=1.5, **base))  # type: ignore[arg-type]


def test_prepared_records_chain_to_the_same_rows() -> None:
    records = [record for number in range(3) for record in call_records(number)]
    plain, plain_seq, plain_head = chain_rows(records, "w", 0, GENESIS)
    ready = {record.id: prepared(record) for record in records[1::2]}
    early, seq, head = chain_rows(records, "w", 0, GENESIS, ready)
    assert (early, seq, head) == (plain, plain_seq, plain_head)
    assert ready == {}  # taken out as used


def test_outcomes_prepared_while_waiting_are_stored_with_a_valid_chain(tmp_path: Path) -> None:
    """The writer process's loop (AuditWriter.serve on its socket inbox, as audit_child runs it),
    on a thread here so that what it prepared can be looked at."""
    gateway, writer_end = socket.socketpair()
    reports = FrameReader()
    holder: list[SocketInbox] = []
    audit = AuditWriter(tmp_path / "audit.db", linger=30.0,  # outcomes wait for the next intent
                        on_settled=lambda ok, failed: holder[0].settled(ok, failed, (0, 0, 0, 0)))
    holder.append(SocketInbox(writer_end, audit, FrameReader(), []))
    serving = threading.Thread(target=lambda: audit.serve(audit.open(), holder[0]))
    serving.start()

    def send(flag: int, record: AuditRecord) -> None:
        gateway.sendall(frame(("record", flag, record_values(record))))

    def settled(record: AuditRecord) -> None:
        gateway.settimeout(10)
        while True:
            for message in reports.feed(gateway.recv(1 << 16)):
                if message[0] == "settled" and record.id in message[1]:
                    return

    try:
        intent, outcome = call_records(1)
        send(COMMIT, intent)
        settled(intent)
        send(LATER, outcome)
        deadline = time.monotonic() + 10
        while outcome.id not in audit._ready and time.monotonic() < deadline:  # woken for it alone
            time.sleep(0.01)
        assert outcome.id in audit._ready
        following, _ = call_records(2)
        send(COMMIT, following)  # the outcome rides with this intent's commit
        settled(following)
        assert audit._ready == {}
    finally:
        gateway.sendall(frame(("stop",)))
        serving.join(10)
        gateway.close()
    with sqlite3.connect(tmp_path / "audit.db") as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM audit_records ORDER BY seq").fetchall()
    assert [(row["call_id"], row["kind"]) for row in rows] == [
        ("call-1", "intent"), ("call-1", "outcome"), ("call-2", "intent")]
    prev = GENESIS
    for row in rows:
        assert row["prev_hash"] == prev and row["hash"] == chain_hash(prev, record_from_row(row))
        prev = row["hash"]
