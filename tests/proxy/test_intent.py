"""IntentRecord sends the intent when the call is judged and waits for it only before the call leaves.

Against a real audit writer (a thread on SQLite in tmp_path) and a real writer process client that
has no writer: the commit runs while the rest of the request is read, the call may leave only once
the record is in the store, a writer that is down still refuses the call on its head, and the
commit's deadline counts from sending, not from the wait.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
from pathlib import Path
from typing import Any

from mitmproxy.test import tflow

from wardgate.gateway.audit import AuditRecord
from wardgate.gateway.audit_process import AuditProcess
from wardgate.gateway.audit_writer import AuditWriter, PendingCommit
from wardgate.gateway.policy import Decision
from wardgate.proxy.call import call_of
from wardgate.proxy.intent import IntentRecord


def judged_flow() -> Any:
    flow = tflow.tflow()
    flow.request.content = b'{"a": 1}'
    call_of(flow).decision = Decision(allow=True, reasons=["allowed"])
    return flow


def kinds(db: Path, call_id: str) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT kind FROM audit_records WHERE call_id = ? ORDER BY seq", (call_id,))]


async def test_the_intent_is_sent_on_the_head_and_waited_for_before_the_call_leaves(audit_writer: AuditWriter, tmp_path: Path) -> None:
    intents = IntentRecord(audit_writer, 5.0)
    flow = judged_flow()
    call = call_of(flow)
    assert intents.requestheaders(flow) is None  # nothing to wait for on the head
    assert call.intent is not None and call.forwarded_at is None
    for _ in range(200):  # committed while the rest of the request is read
        if kinds(tmp_path / "audit.db", call.call_id):
            break
        await asyncio.sleep(0.01)
    assert kinds(tmp_path / "audit.db", call.call_id) == ["intent"]
    leaving = intents.request(flow)
    assert leaving is not None and call.forwarded_at is None  # may not leave until the wait is over
    await leaving
    assert call.forwarded_at is not None and flow.response is None
    assert audit_writer.metrics.stages["audit_commit"].n == 1  # the wait is what the commit metric measures


async def test_a_denied_call_sends_no_intent(audit_writer: AuditWriter, tmp_path: Path) -> None:
    intents = IntentRecord(audit_writer, 5.0)
    flow = judged_flow()
    call_of(flow).decision = Decision(allow=False, reasons=["denied"])
    assert intents.requestheaders(flow) is None and intents.request(flow) is None
    assert call_of(flow).intent is None and call_of(flow).forwarded_at is None


async def test_with_the_writer_down_the_call_is_refused_on_its_head() -> None:
    audit = AuditProcess({"busy_timeout": 1.0})  # never started: no writer process to send to
    flow = judged_flow()
    refusing = IntentRecord(audit, 5.0).requestheaders(flow)
    assert refusing is not None  # the head's step waits: refused before the body would be read
    await refusing
    assert flow.response is not None and flow.response.status_code == 503
    assert flow.response.headers["X-Wardgate-Error"] == "audit_unavailable"
    assert call_of(flow).forwarded_at is None


async def test_the_deadline_counts_from_sending_the_intent(audit_writer: AuditWriter, tmp_path: Path) -> None:
    lock = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # the store cannot take the intent
    try:
        intents = IntentRecord(audit_writer, 0.2)
        flow = judged_flow()
        assert intents.requestheaders(flow) is None
        await asyncio.sleep(0.6)  # the body takes longer than the whole commit timeout
        assert call_of(flow).intent is not None and call_of(flow).intent.done
        leaving = intents.request(flow)
        assert leaving is not None
        await leaving
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert flow.response is not None and flow.response.status_code == 503
    assert flow.response.headers["X-Wardgate-Error"] == "audit_unavailable"
    assert call_of(flow).forwarded_at is None


async def test_a_failed_commit_nobody_waits_for_is_not_reported_as_unretrieved() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        pending = PendingCommit(AuditProcess({"busy_timeout": 1.0}), AuditRecord(call_id="c", kind="intent"), 5.0)
        assert pending.done  # failed at once: no writer
        del pending
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert reported == []
