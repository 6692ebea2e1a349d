"""AuditTrail: a forwarded call's outcome record, written once, after its response is on its way."""

from __future__ import annotations

import asyncio
import time

from mitmproxy import flow as mitmflow
from mitmproxy.test import tflow

from wardgate.gateway.audit import AuditRecord
from wardgate.proxy.audit_trail import AuditTrail
from wardgate.proxy.call import call_of


class Outcomes:
    """The part of an audit log AuditTrail uses for outcomes: what it was handed, in order."""

    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def record_later(self, record: AuditRecord) -> None:
        self.records.append(record)


async def test_the_outcome_is_written_after_the_response_hook_and_only_once() -> None:
    outcomes = Outcomes()
    trail = AuditTrail(outcomes)  # type: ignore[arg-type]
    flow = tflow.tflow(resp=True)
    call = call_of(flow)
    call.forwarded_at = time.perf_counter() - 0.01
    trail.response(flow)
    assert outcomes.records == [], "the agent's response does not wait for its outcome record"
    await asyncio.sleep(0)  # the next turn of the event loop: the response has been written
    (record,) = outcomes.records
    assert (record.kind, record.call_id, record.status) == ("outcome", call.call_id, flow.response.status_code)
    assert record.latency_upstream_ms is not None and record.latency_upstream_ms >= 10
    assert record.bytes_out == len(flow.response.raw_content or b"")
    flow.error = mitmflow.Error("client disconnected")  # an error after the response: no second outcome
    trail.error(flow)
    await asyncio.sleep(0)
    assert len(outcomes.records) == 1
