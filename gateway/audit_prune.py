"""Retention: remove records older than a date and keep the rest verifiable.

Per writer chain, the oldest contiguous run of records before the cut-off is deleted, and a signed
``prune`` checkpoint records the last deleted position and its hash, in the same transaction. The
verifier then starts that chain from the checkpoint instead of the genesis hash; without a valid
signature, a deletion at the head of a chain still shows as ``deleted``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .audit import SCHEMA
from .audit_checkpoint import INSERT_CHECKPOINT, Checkpoint, CheckpointSink, checkpoint_row
from .audit_keys import CheckpointSigner
from .audit_store import POSTGRES, Dialect, Source, reader


@dataclass(frozen=True, slots=True)
class Pruned:
    writer: str
    through_seq: int
    records: int


def prune(source: Source, signer: CheckpointSigner, before: float, sink: CheckpointSink | None = None) -> list[Pruned]:
    """Delete records older than ``before`` (epoch seconds), chain by chain, with a prune checkpoint each."""
    done: list[Pruned] = []
    checkpoints: list[Checkpoint] = []
    with reader(source, SCHEMA) as (conn, dialect):
        q = dialect.sql
        with _transaction(conn, dialect):  # the writers wait: the cut and its checkpoint land together
            writers = [r["writer"] for r in conn.execute(q('SELECT DISTINCT "writer" FROM audit_records WHERE "time" < ?'), (before,)).fetchall()]
            for writer in writers:
                keep = conn.execute(q('SELECT MIN("seq") AS s FROM audit_records WHERE "writer" = ? AND "time" >= ?'),
                                    (writer, before)).fetchone()["s"]
                through = keep - 1 if keep is not None else conn.execute(
                    q('SELECT MAX("seq") AS s FROM audit_records WHERE "writer" = ?'), (writer,)).fetchone()["s"]
                last = conn.execute(q('SELECT "hash" FROM audit_records WHERE "writer" = ? AND "seq" = ?'), (writer, through)).fetchone()
                if last is None:
                    continue  # the record at the cut is already gone: leave it for verify to report
                count = conn.execute(q('DELETE FROM audit_records WHERE "writer" = ? AND "seq" <= ?'), (writer, through)).rowcount
                cp = Checkpoint.signed(signer, writer=writer, seq=through, hash=last["hash"], time=time.time(), kind="prune")
                conn.execute(q(INSERT_CHECKPOINT), checkpoint_row(cp))
                checkpoints.append(cp)
                done.append(Pruned(writer, through, count))
    if sink is not None:
        for cp in checkpoints:
            sink.emit(cp)
        sink.close()
    return done


@contextlib.contextmanager
def _transaction(conn: Any, dialect: Dialect) -> Iterator[None]:
    if dialect is POSTGRES:
        with conn.transaction():
            conn.execute("LOCK TABLE audit_records IN SHARE ROW EXCLUSIVE MODE")
            yield
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
