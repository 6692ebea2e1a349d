"""Audit store throughput and commit latency: group commit vs one commit (one disk flush) per record.

    .venv/bin/python bench/audit.py [--callers 32] [--records 4000] [--postgres DSN]
    scripts/postgres.sh .venv/bin/python bench/audit.py --postgres-from-env   # also PostgreSQL

``callers`` asyncio tasks each commit records one after another, as concurrent calls do on the proxy
(an intent must be committed before its call is forwarded). Both modes use the real AuditWriter on a
fresh SQLite file with synchronous=FULL and signed checkpoints; only ``max_batch`` differs.
Prints records/s, commit latency percentiles and the ratios. Not a test: numbers depend on the disk.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

from wardgate.gateway.audit import AuditRecord
from wardgate.gateway.audit_keys import load_or_create_signer
from wardgate.gateway.audit_store import Postgres
from wardgate.gateway.audit_writer import AuditWriter, CheckpointPolicy


async def run(folder: Path, max_batch: int, callers: int, records: int, dsn: str | None = None) -> tuple[float, list[float], float]:
    writer = AuditWriter(Postgres(dsn) if dsn else folder / "audit.db", max_batch=max_batch,
                         checkpoints=CheckpointPolicy(load_or_create_signer(folder / "keys")))
    writer.start()
    latencies: list[float] = []

    async def caller(number: int) -> None:
        for index in range(records // callers):
            record = AuditRecord(call_id=f"{number}-{index}", kind="intent", agent="bench", user="u", tenant="t",
                                 method="GET", host="api.example.com", port=443, path="/v1/items", decision="allow")
            started = time.perf_counter()
            await writer.commit(record, 30)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller(n) for n in range(callers)))
    elapsed = time.perf_counter() - started
    batches = writer.batches
    await writer.stop()
    return len(latencies) / elapsed, latencies, len(latencies) / max(batches, 1)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--postgres", metavar="DSN", help="also measure a PostgreSQL store (a scratch database!)")
    parser.add_argument("--postgres-from-env", action="store_true", help="take the DSN from WARDGATE_TEST_PG_DSN")
    args = parser.parse_args()
    dsn = args.postgres or (os.environ.get("WARDGATE_TEST_PG_DSN") if args.postgres_from_env else None)
    backends = [("SQLite WAL synchronous=FULL", None)] + ([("PostgreSQL synchronous_commit=on", dsn)] if dsn else [])
    for (label, backend_dsn), (callers, records) in itertools.product(backends, ((1, min(args.records, 500)), (args.callers, args.records))):
        results = {}
        for name, batch in (("group commit", 512), ("commit per record", 1)):
            with tempfile.TemporaryDirectory(prefix="wardgate-bench-") as folder:
                results[name] = asyncio.run(run(Path(folder), batch, callers, records, backend_dsn))
        print(f"\n{callers} concurrent caller(s), {records} records, {label}")
        print(f"{'mode':20} {'records/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'records/commit':>15}")
        for name, (rate, latencies, per_batch) in results.items():
            print(f"{name:20} {rate:10.0f} {pct(latencies, 50):8.2f} {pct(latencies, 99):8.2f} {per_batch:15.1f}")
        group, single = results["group commit"], results["commit per record"]
        print(f"throughput ratio (group / per-record): {group[0] / single[0]:.1f}x; "
              f"p50 commit latency ratio (per-record / group): {pct(single[1], 50) / pct(group[1], 50):.1f}x")

if __name__ == "__main__":
    main()
