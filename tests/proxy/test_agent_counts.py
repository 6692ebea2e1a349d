"""Per-agent counts shared by a gateway's proxy processes (proxy/agent_counts.py): one bucket and one
tunnel count per agent whichever process checks, never a token spent twice, agents apart, and a
dead worker's tunnels released."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import time
from pathlib import Path

import pytest

from wardgate.proxy.agent_counts import LocalCounts, SharedCounts

RATE, BURST = 0.001, 6000  # no token comes back during a test


def test_two_handles_on_the_file_see_one_bucket(tmp_path: Path) -> None:
    first = SharedCounts.create(tmp_path / "counts", 1.0, 3, 2)
    second = SharedCounts.open(tmp_path / "counts", 1.0, 3, 2, 1)
    now = time.monotonic()
    assert [first.take(("acme", "bot"), now), second.take(("acme", "bot"), now), first.take(("acme", "bot"), now)] == [0, 0, 0]
    assert second.take(("acme", "bot"), now) == 1.0, "the fourth call waits a second for a token"
    assert second.take(("acme", "other"), now) == 0 and first.take(("globex", "bot"), now) == 0, "agents apart"
    assert first.take(("acme", "bot"), now + 1.0) == 0, "a token is back after a second"
    first.close()
    second.close()


def _spend(path: str, index: int, calls: int, go: "multiprocessing.synchronize.Event", results: "multiprocessing.Queue[int]") -> None:
    counts = SharedCounts.open(Path(path), RATE, BURST, 4, index)
    go.wait(30)
    results.put(sum(counts.take(("acme", "bot"), time.monotonic()) == 0 for _ in range(calls)))


def test_processes_taking_at_once_never_spend_a_token_twice(tmp_path: Path) -> None:
    path = tmp_path / "counts"
    owner = SharedCounts.create(path, RATE, BURST, 4)
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[int] = context.Queue()
    go = context.Event()
    processes = [context.Process(target=_spend, args=(str(path), index, 5000, go, results)) for index in (1, 2, 3)]
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


def test_local_counts_refill_at_the_rate_and_count_tunnels() -> None:
    counts = LocalCounts(2.0, 2)
    assert [counts.take(("a", "b"), 10.0) for _ in range(3)] == [0, 0, 0.5]
    assert counts.take(("a", "b"), 10.5) == 0
    assert [counts.open_tunnel(("a", "b"), 2) for _ in range(3)] == [None, None, 2]
    counts.close_tunnel(("a", "b"))
    assert counts.open_tunnel(("a", "b"), 2) is None


def test_only_buckets_full_again_are_forgotten() -> None:
    counts = LocalCounts(2.0, 2)  # a bucket refills in 1 s
    assert [counts.take(("a", "b"), 10.0) for _ in range(2)] == [0, 0]
    assert counts.take(("c", "d"), 10.0) == 0
    counts.forget_quiet(10.9)  # not full yet: forgetting it would hand the agent a full bucket early
    assert [counts.take(("a", "b"), 10.9) for _ in range(2)] == [0, pytest.approx(0.1)]  # 1.8 tokens, not 2
    counts.forget_quiet(11.5)  # ("a", "b") last counted at 10.9, ("c", "d") at 10.0: only the latter is full
    assert set(counts._buckets) == {("a", "b")}  # the memory the sweep exists to give back
    assert [counts.take(("c", "d"), 11.5) for _ in range(3)] == [0, 0, 0.5]


def test_tunnels_are_counted_across_workers_and_a_dead_workers_are_released(tmp_path: Path) -> None:
    first = SharedCounts.create(tmp_path / "counts", 1.0, 3, 3)
    second = SharedCounts.open(tmp_path / "counts", 1.0, 3, 3, 1)
    third = SharedCounts.open(tmp_path / "counts", 1.0, 3, 3, 2)
    bot, other = ("acme", "bot"), ("acme", "other")
    assert [first.open_tunnel(bot, 4), second.open_tunnel(bot, 4), second.open_tunnel(bot, 4)] == [None] * 3
    assert third.open_tunnel(bot, 4) is None and first.open_tunnel(bot, 4) == 4, "the fifth, from any worker, waits"
    assert third.open_tunnel(other, 4) is None, "agents apart"
    second.close_tunnel(bot)
    assert first.open_tunnel(bot, 4) is None and third.open_tunnel(bot, 4) == 4
    first.forget(1)  # worker 1 died: its one remaining tunnel of bot is gone with it
    assert third.open_tunnel(bot, 4) is None and third.open_tunnel(bot, 4) == 4
    for counts in (first, second, third):
        counts.close()
