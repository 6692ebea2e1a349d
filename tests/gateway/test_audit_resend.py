"""A record that reaches the writer twice settles as stored and does not fail its batch.

The gateway sends again every record a writer had not reported settled when it was killed; some of
those the killed writer had already committed. Ids are unique, so before, the batch holding one of
them failed whole, and the fresh intents in it were refused as audit_unavailable."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from wardgate.gateway.audit import AuditRecord
from wardgate.gateway.audit_writer import AuditWriter


async def test_a_record_sent_again_settles_and_its_batch_commits(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path / "audit.db")
    writer.start()
    try:
        first = AuditRecord(call_id="c1", kind="intent", agent="bot")
        await writer.commit(first, 5)
        fresh = AuditRecord(call_id="c2", kind="intent", agent="bot")
        await asyncio.gather(writer.commit(first, 5), writer.commit(fresh, 5))
        await writer.commit(first, 5)  # alone in its batch, too
    finally:
        await writer.stop()
    with sqlite3.connect(tmp_path / "audit.db") as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM audit_records")]
    assert sorted(ids) == sorted([first.id, fresh.id])
