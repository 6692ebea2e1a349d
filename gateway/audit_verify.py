"""``wardgate audit verify``: what the hash chains and signed checkpoints prove, and what they don't.

Per writer chain (one per gateway process) it reports:

- ``edited``                a record whose content no longer matches its own hash;
- ``deleted``               missing sequence numbers between records that are present (a gap);
- ``inserted_or_reordered`` a record whose ``prev_hash`` is not the hash of the record before it
                            (inserted, moved, or a neighbour rewritten with a recomputed hash);
- ``checkpoint_mismatch``   a signed checkpoint vouches for a different record at that position
                            (the chain was rewritten, even if consistently);
- ``truncated``             a signed checkpoint or clean stop vouches for records that are gone;
- ``after_clean_stop``      records appended after the writer's signed clean-stop;
- ``forged_checkpoint``     a checkpoint whose signature does not verify with a trusted key;
- ``checkpoint_removed``    a checkpoint in the external sink that the database no longer has;
- ``unsigned_chain``        records under a writer id no signed checkpoint vouches for;
- ``interrupted`` (warning) no clean stop: the writer is running or was killed; records after its
                            last checkpoint are protected by the hash chain only;
- ``intent_without_outcome`` (warning) an intent with no outcome: in flight, or the process died.

The honest limit: anyone who can write the database can cut records after the last checkpoint
that exists *outside* it (the external sink), and remove the database's own later checkpoints with
them. Without a sink, that is every record after the writer's first checkpoint.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from .audit import GENESIS, chain_hash, record_from_row
from .audit_checkpoint import Checkpoint
from .audit_keys import signature_valid

INVALID, WARNING = "invalid", "warning"


@dataclass(slots=True)
class Finding:
    kind: str
    severity: str
    message: str
    writer: str | None = None
    seq: int | None = None


@dataclass(slots=True)
class ChainReport:
    writer: str
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    first_time: float | None = None
    last_time: float | None = None
    checkpoints: int = 0
    last_checkpoint_seq: int | None = None
    last_external_seq: int | None = None
    pruned_through: int = 0
    status: str = "open"  # closed (clean stop) | open (running or interrupted)
    findings: list[Finding] = field(default_factory=list)

    def add(self, kind: str, severity: str, message: str, seq: int | None = None) -> None:
        self.findings.append(Finding(kind, severity, message, self.writer, seq))


@dataclass(slots=True)
class VerifyReport:
    chains: list[ChainReport]
    findings: list[Finding]
    limit: str

    @property
    def invalid(self) -> list[Finding]:
        return [f for f in self.all_findings if f.severity == INVALID]

    @property
    def all_findings(self) -> list[Finding]:
        return [*self.findings, *(f for chain in self.chains for f in chain.findings)]

    @property
    def valid(self) -> bool:
        return not self.invalid

    def as_dict(self) -> dict[str, Any]:
        return {"valid": self.valid, "chains": [asdict(c) for c in self.chains],
                "findings": [asdict(f) for f in self.findings], "limit": self.limit}


def _ranges(seqs: list[int]) -> str:
    return f"{seqs[0]}" if seqs[0] == seqs[-1] else f"{seqs[0]}..{seqs[-1]}"


def verify(
    rows: Iterable[Any],
    checkpoints: Iterable[Checkpoint],
    keys: dict[str, ed25519.Ed25519PublicKey],
    *,
    external: list[Checkpoint] | None = None,
    dangling_intents: list[tuple[str, str, int]] = (),  # type: ignore[assignment]
) -> VerifyReport:
    """Check ``rows`` (sorted by writer, seq) against the checkpoints and the trusted ``keys``."""
    findings: list[Finding] = []
    if not keys:
        findings.append(Finding("no_trusted_key", INVALID, "no public checkpoint key to verify with (see --public-key)"))

    def genuine(cp: Checkpoint, where: str) -> bool:
        key = keys.get(cp.key_id)
        if key is not None and signature_valid(key, cp.signature, cp.payload()):
            return True
        findings.append(Finding("forged_checkpoint", INVALID,
                                f"{where} checkpoint ({cp.kind}, seq {cp.seq}) has an invalid signature or unknown key {cp.key_id}",
                                cp.writer, cp.seq))
        return False

    stored: dict[str, list[Checkpoint]] = {}
    for cp in checkpoints:
        if genuine(cp, "stored"):
            stored.setdefault(cp.writer, []).append(cp)
    outside: dict[str, list[Checkpoint]] = {}
    for cp in external or []:
        if genuine(cp, "external"):
            outside.setdefault(cp.writer, []).append(cp)

    chains: dict[str, ChainReport] = {}
    grouped = itertools.groupby(rows, key=lambda row: row["writer"])
    for writer, group in grouped:
        chains[writer] = _verify_chain(writer, group, stored.get(writer, []), outside.get(writer, []))
    for writer in set(stored) | set(outside):
        if writer not in chains:
            chains[writer] = _verify_chain(writer, iter(()), stored.get(writer, []), outside.get(writer, []))

    if dangling_intents:
        sample = ", ".join(call for call, _, _ in dangling_intents[:5])
        findings.append(Finding("intent_without_outcome", WARNING,
                                f"{len(dangling_intents)} intent(s) without an outcome (in flight, or the gateway died): {sample}"))
    if external is None:
        limit = ("no external checkpoint sink: someone able to write the database can remove records after a "
                 "writer's first checkpoint together with the later checkpoints, undetected")
    else:
        covered = [f"{c.writer[-8:]}@{c.last_external_seq}" for c in chains.values() if c.last_external_seq is not None]
        limit = ("records after the last external checkpoint of each chain "
                 f"({', '.join(covered) or 'none'}) are protected by the database's own checkpoints only")
    return VerifyReport(sorted(chains.values(), key=lambda c: (c.first_time or 0, c.writer)), findings, limit)


def _verify_chain(writer: str, rows: Iterator[Any], stored: list[Checkpoint], outside: list[Checkpoint]) -> ChainReport:
    chain = ChainReport(writer)
    stored_ids = {cp.identity for cp in stored}
    for cp in outside:
        if cp.identity not in stored_ids:
            chain.add("checkpoint_removed", INVALID,
                      f"checkpoint ({cp.kind}, seq {cp.seq}) is in the external sink but not in the database", cp.seq)
    every = {cp.identity: cp for cp in [*stored, *outside]}.values()
    chain.checkpoints = len(stored)
    chain.last_external_seq = max((cp.seq for cp in outside), default=None)
    prunes = [cp for cp in every if cp.kind == "prune"]
    prune = max(prunes, key=lambda cp: cp.seq, default=None)
    chain.pruned_through = prune.seq if prune else 0
    expected, prev = (prune.seq + 1, prune.hash) if prune else (1, GENESIS)
    vouched: dict[int, list[Checkpoint]] = {}
    for cp in every:
        if cp.seq > chain.pruned_through:
            vouched.setdefault(cp.seq, []).append(cp)
    stops = [cp for cp in every if cp.kind == "clean_stop"]
    stop = min(stops, key=lambda cp: cp.seq, default=None)
    if not any(cp.kind == "open" for cp in every):
        chain.add("unsigned_chain", INVALID, "no signed open checkpoint vouches for this writer id")

    after_stop: list[int] = []
    for row in rows:
        seq = int(row["seq"])
        if seq <= chain.pruned_through:
            continue
        chain.records += 1
        chain.first_seq = seq if chain.first_seq is None else chain.first_seq
        chain.last_seq = seq
        chain.first_time = row["time"] if chain.first_time is None else min(chain.first_time, row["time"])
        chain.last_time = row["time"] if chain.last_time is None else max(chain.last_time, row["time"])
        try:
            recomputed = chain_hash(row["prev_hash"], record_from_row(row))
        except (TypeError, ValueError):
            recomputed = ""
        if recomputed != row["hash"]:
            chain.add("edited", INVALID, f"record seq {seq} (id {row['id']}) does not match its hash", seq)
        if seq > expected:
            chain.add("deleted", INVALID, f"records seq {_ranges([expected, seq - 1])} are missing", expected)
        elif row["prev_hash"] != prev:
            chain.add("inserted_or_reordered", INVALID,
                      f"record seq {seq} (id {row['id']}) does not follow seq {seq - 1} (inserted, moved, or its neighbour rewritten)", seq)
        for cp in vouched.get(seq, []):
            if cp.hash != row["hash"]:
                chain.add("checkpoint_mismatch", INVALID,
                          f"the signed {cp.kind} checkpoint at seq {seq} vouches for a different record", seq)
        if stop is not None and seq > stop.seq:
            after_stop.append(seq)
        prev, expected = row["hash"], seq + 1

    last = chain.last_seq if chain.last_seq is not None else chain.pruned_through
    highest = max(every, key=lambda cp: cp.seq, default=None)
    if highest is not None:
        chain.last_checkpoint_seq = highest.seq
        if highest.seq > last:
            chain.add("truncated", INVALID,
                      f"records seq {_ranges([last + 1, highest.seq])} are gone: the signed {highest.kind} checkpoint "
                      f"of {_when(highest.time)} vouches for them", last + 1)
    if after_stop:
        chain.add("after_clean_stop", INVALID,
                  f"{len(after_stop)} record(s) (seq {_ranges(after_stop)}) follow the writer's signed clean stop", after_stop[0])
    if stop is not None:
        chain.status = "closed"
    else:
        uncovered = last - (highest.seq if highest else 0)
        chain.add("interrupted", WARNING,
                  f"no clean stop: the writer is running or was interrupted; {max(uncovered, 0)} record(s) after the "
                  f"last checkpoint (seq {highest.seq if highest else 0}) are protected by the hash chain only")
    return chain


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def verify_sqlite(path: Path, keys: dict[str, ed25519.Ed25519PublicKey], external: list[Checkpoint] | None) -> VerifyReport:
    """Verify the SQLite audit store at ``path`` read-only (it is never created or changed)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    conn.row_factory = sqlite3.Row
    try:
        checkpoints = [Checkpoint.from_mapping(r) for r in conn.execute("SELECT * FROM audit_checkpoints ORDER BY id")]
        dangling = [tuple(r) for r in conn.execute(
            "SELECT call_id, writer, seq FROM audit_records i WHERE kind = 'intent' AND NOT EXISTS "
            "(SELECT 1 FROM audit_records o WHERE o.call_id = i.call_id AND o.kind IN ('outcome', 'refusal')) "
            "ORDER BY id")]
        rows = conn.execute("SELECT * FROM audit_records ORDER BY writer, seq")
        return verify(rows, checkpoints, keys, external=external, dangling_intents=dangling)
    finally:
        conn.close()


def render(report: VerifyReport) -> str:
    """The summary a person reads: one block per chain, findings first, the limit last."""
    lines = []
    for chain in report.chains:
        bad = [f for f in chain.findings if f.severity == INVALID]
        verdict = "INVALID" if bad else "ok"
        span = f"seq {chain.first_seq}..{chain.last_seq}" if chain.records else "no records"
        times = f", {_when(chain.first_time)} .. {_when(chain.last_time)}" if chain.first_time else ""
        pruned = f", pruned through seq {chain.pruned_through}" if chain.pruned_through else ""
        lines.append(f"chain {chain.writer}: {verdict} — {chain.records} records ({span}{times}), "
                     f"{chain.checkpoints} checkpoints, {chain.status}{pruned}")
        for finding in chain.findings:
            lines.append(f"  {finding.severity.upper():8} {finding.kind}: {finding.message}")
    for finding in report.findings:
        lines.append(f"{finding.severity.upper():8} {finding.kind}: {finding.message}")
    total = len(report.invalid)
    lines.append(f"result: {'VALID' if report.valid else f'INVALID ({total} finding(s))'} across {len(report.chains)} chain(s)")
    lines.append(f"limit: {report.limit}")
    return "\n".join(lines)
