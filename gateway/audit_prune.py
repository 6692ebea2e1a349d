"""Retention: remove records older than a date and keep the rest verifiable.

Per writer chain, the oldest contiguous run of records before the cut-off is deleted, and a signed
``prune`` checkpoint records the last deleted position and its hash, in the same transaction. The
verifier then starts that chain from the checkpoint instead of the genesis hash; without a valid
signature, a deletion at the head of a chain still shows as ``deleted``.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from .audit import SCHEMA
from .audit_checkpoint import INSERT_CHECKPOINT, Checkpoint, CheckpointSink, checkpoint_row
from .audit_keys import CheckpointSigner
from .sqlite import connect


@dataclass(frozen=True, slots=True)
class Pruned:
    writer: str
    through_seq: int
    records: int


def prune(path: Path, signer: CheckpointSigner, before: float, sink: CheckpointSink | None = None) -> list[Pruned]:
    """Delete records older than ``before`` (epoch seconds), chain by chain, with a prune checkpoint each."""
    conn = connect(path, schema=SCHEMA)
    done: list[Pruned] = []
    checkpoints: list[Checkpoint] = []
    try:
        conn.execute("BEGIN IMMEDIATE")  # the writers wait: the cut and its checkpoint land together
        writers = [row[0] for row in conn.execute("SELECT DISTINCT writer FROM audit_records WHERE time < ?", (before,))]
        for writer in writers:
            keep = conn.execute("SELECT MIN(seq) FROM audit_records WHERE writer = ? AND time >= ?", (writer, before)).fetchone()[0]
            through = keep - 1 if keep is not None else conn.execute(
                "SELECT MAX(seq) FROM audit_records WHERE writer = ?", (writer,)).fetchone()[0]
            last = conn.execute("SELECT hash FROM audit_records WHERE writer = ? AND seq = ?", (writer, through)).fetchone()
            if last is None:
                continue  # the record at the cut is already gone: leave it for verify to report
            count = conn.execute("DELETE FROM audit_records WHERE writer = ? AND seq <= ?", (writer, through)).rowcount
            cp = Checkpoint.signed(signer, writer=writer, seq=through, hash=last[0], time=time.time(), kind="prune")
            conn.execute(INSERT_CHECKPOINT, checkpoint_row(cp))
            checkpoints.append(cp)
            done.append(Pruned(writer, through, count))
        conn.execute("COMMIT")
    except sqlite3.Error:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
    if sink is not None:
        for cp in checkpoints:
            sink.emit(cp)
        sink.close()
    return done
