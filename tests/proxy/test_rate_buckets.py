"""Token buckets shared by a gateway's proxy processes (proxy/rate_buckets.py): one bucket per agent
whichever process takes from it, never a token spent twice, agents apart."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import time
from pathlib import Path

from wardgate.proxy.rate_buckets import LocalBuckets, SharedBuckets

RATE, BURST = 0.001, 6000  # no token comes back during a test


def test_two_handles_on_the_file_see_one_bucket(tmp_path: Path) -> None:
    first = SharedBuckets.create(tmp_path / "buckets", 1.0, 3)
    second = SharedBuckets.open(tmp_path / "buckets", 1.0, 3)
    now = time.monotonic()
    assert [first.take(("acme", "bot"), now), second.take(("acme", "bot"), now), first.take(("acme", "bot"), now)] == [0, 0, 0]
    assert second.take(("acme", "bot"), now) == 1.0, "the fourth call waits a second for a token"
    assert second.take(("acme", "other"), now) == 0 and first.take(("globex", "bot"), now) == 0, "agents apart"
    assert first.take(("acme", "bot"), now + 1.0) == 0, "a token is back after a second"
    first.close()
    second.close()


def _spend(path: str, calls: int, go: "multiprocessing.synchronize.Event", results: "multiprocessing.Queue[int]") -> None:
    buckets = SharedBuckets.open(Path(path), RATE, BURST)
    go.wait(30)
    results.put(sum(buckets.take(("acme", "bot"), time.monotonic()) == 0 for _ in range(calls)))


def test_processes_taking_at_once_never_spend_a_token_twice(tmp_path: Path) -> None:
    path = tmp_path / "buckets"
    owner = SharedBuckets.create(path, RATE, BURST)
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[int] = context.Queue()
    go = context.Event()
    processes = [context.Process(target=_spend, args=(str(path), 5000, go, results)) for _ in range(3)]
    for process in processes:
        process.start()
    time.sleep(1.0)  # all three started and waiting: they take at the same time
    go.set()
    granted = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(30)
    assert sum(granted) == BURST, granted  # 15,000 tries for 6,000 tokens: exactly 6,000 granted
    assert all(granted), "every process got some: they took side by side"
    owner.close()


def test_local_buckets_refill_at_the_rate() -> None:
    buckets = LocalBuckets(2.0, 2)
    assert [buckets.take(("a", "b"), 10.0) for _ in range(3)] == [0, 0, 0.5]
    assert buckets.take(("a", "b"), 10.5) == 0
