"""The writer process's wire format (gateway/audit_child.py): frames split anywhere, nonsense refused."""

from __future__ import annotations

import marshal
import struct

import pytest

from wardgate.gateway.audit import AuditRecord, record_values
from wardgate.gateway.audit_child import COMMIT, MAX_FRAME, FrameError, FrameReader, frame


def test_a_record_survives_the_trip_whole() -> None:
    record = AuditRecord(call_id="c1", kind="intent", agent="bot", reasons=["destination_allowed"], port=443,
                         latency_policy_ms=1.5, policy_input='{"request":{}}')
    (message,) = FrameReader().feed(frame(("record", COMMIT, record_values(record))))
    assert message[:2] == ("record", COMMIT)
    assert AuditRecord(*message[2]) == record


@pytest.mark.parametrize("cut", [1, 3, 4, 5, 20])
def test_frames_split_at_any_byte_come_out_once_and_in_order(cut: int) -> None:
    stream = frame(("a", 1)) + frame(("b", [2, 3])) + frame(("c",))
    reader = FrameReader()
    got = []
    for start in range(0, len(stream), cut):
        got += reader.feed(stream[start:start + cut])
    assert got == [("a", 1), ("b", [2, 3]), ("c",)]


@pytest.mark.parametrize("data", [
    struct.pack(">I", MAX_FRAME + 1),                         # a length no frame has
    struct.pack(">I", 3) + b"\xff\xfe\xfd",                   # not marshal
    struct.pack(">I", len(marshal.dumps(7))) + marshal.dumps(7),    # not a message tuple
    struct.pack(">I", len(marshal.dumps(()))) + marshal.dumps(()),  # an empty one
], ids=["oversized", "garbage", "not-a-tuple", "empty"])
def test_nonsense_is_an_error_not_a_message(data: bytes) -> None:
    with pytest.raises(FrameError):
        FrameReader().feed(data)


def test_what_marshal_cannot_write_is_refused_before_it_is_sent() -> None:
    with pytest.raises(ValueError):
        frame(("record", COMMIT, (object(),)))
