"""Durable runs against real stores: SQLite files and the PostgreSQL from scripts/postgres.sh."""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from support import REPO, require
from wardgate.sdk.errors import NondeterministicRun, ResultNotSerializable, RunCancelled, RunLocked, StepFailed
from wardgate.sdk.runs import Retry, Run
from wardgate.sdk.stores import CheckpointStore, create


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/runs.db"
    dsn = os.environ.get("WARDGATE_TEST_PG_DSN")
    require("PostgreSQL (run under scripts/postgres.sh)", bool(dsn))
    return str(dsn)


@pytest.fixture
def store(store_url: str) -> Iterator[CheckpointStore]:
    opened = create(store_url)
    yield opened
    opened.close()


def run_id() -> str:
    return f"run-{uuid.uuid4().hex[:12]}"


class Order(BaseModel):
    id: int
    items: list[str]
    placed: datetime.datetime


def fetch_order(order_id: int) -> Order:
    return Order(id=order_id, items=["a", "b"], placed=datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC))


def test_completed_steps_replay_without_running(store: CheckpointStore) -> None:
    calls: list[str] = []

    def first() -> int:
        calls.append("first")
        return 1

    def second(x: int) -> int:
        calls.append("second")
        return x + 1

    rid = run_id()
    run = Run(store, rid).open()
    assert run.step(first) == 1
    assert run.step(second, 1) == 2
    run.close("running")  # as if the process stopped here: the run stays resumable

    with Run(store, rid) as again:
        assert again.step(first) == 1
        assert again.step(second, 1) == 2
        assert again.step(second, 10) == 11
        again.complete({"total": 11})
    assert calls == ["first", "second", "second"]
    record = store.get(rid)
    assert record is not None and record.status == "completed" and record.steps == 3


def test_recorded_error_is_reraised_without_running(store: CheckpointStore) -> None:
    calls = []

    def flaky(kind: str) -> None:
        calls.append(kind)
        raise ValueError(f"bad {kind}")

    rid = run_id()
    with pytest.raises(ValueError, match="bad input"), Run(store, rid) as run:
        run.step(flaky, "input")
    assert store.get(rid).status == "failed"
    with pytest.raises(ValueError, match="bad input"), Run(store, rid) as run:
        run.step(flaky, "input")
    assert calls == ["input"]


def test_unrebuildable_error_replays_as_step_failed(store: CheckpointStore) -> None:
    class Local(Exception):
        def __init__(self, a: int, b: int) -> None:
            super().__init__(f"{a}/{b}")

    def fails() -> None:
        raise Local(1, 2)

    rid = run_id()
    with pytest.raises(Local), Run(store, rid) as run:
        run.step(fails)
    with pytest.raises(StepFailed, match="Local"), Run(store, rid) as run:
        run.step(fails)


def test_a_different_step_at_a_recorded_position_names_both(store: CheckpointStore) -> None:
    def charge() -> str:
        return "charged"

    def refund() -> str:
        return "refunded"

    rid = run_id()
    with Run(store, rid) as run:
        run.step(charge)
    with pytest.raises(NondeterministicRun) as info, Run(store, rid) as run:
        run.step(refund)
    assert "charge" in str(info.value) and "refund" in str(info.value) and "step 0" in str(info.value)


def test_pydantic_results_round_trip(store: CheckpointStore) -> None:
    rid = run_id()
    with Run(store, rid) as run:
        first = run.step(fetch_order, 7)
    with Run(store, rid) as run:
        replayed = run.step(fetch_order, 7)
    assert isinstance(replayed, Order) and replayed == first


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"when": datetime.date(2026, 1, 1)}, "$.when"),
        ({"items": [1, 2, {3, 4}]}, "$.items[2]"),
        ({"n": float("nan")}, "$.n"),
        ({1: "x"}, "$"),
        (object(), "$"),
    ],
)
def test_unserialisable_result_fails_at_checkpoint_with_its_path(store: CheckpointStore, value: object, path: str) -> None:
    rid = run_id()
    with pytest.raises(ResultNotSerializable) as info, Run(store, rid) as run:
        run.step(lambda: value, name="produce")
    assert str(info.value).startswith(path + ":")
    assert store.steps(rid) == []


def test_retry_with_backoff_records_only_the_final_outcome(store: CheckpointStore) -> None:
    attempts = []

    def sometimes() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return "ok"

    rid = run_id()
    with Run(store, rid) as run:
        assert run.step(sometimes, retry=Retry(attempts=4, initial=0.001)) == "ok"
    [step] = store.steps(rid)
    assert step.status == "ok" and step.attempts == 3


def test_retry_gives_up_after_its_attempts(store: CheckpointStore) -> None:
    def never() -> None:
        raise ConnectionError("down")

    rid = run_id()
    with pytest.raises(ConnectionError), Run(store, rid) as run:
        run.step(never, retry=Retry(attempts=2, initial=0.001))
    [step] = store.steps(rid)
    assert step.status == "error" and step.attempts == 2


def test_durable_sleep_keeps_its_original_wake_time(store: CheckpointStore) -> None:
    rid = run_id()
    run = Run(store, rid).open()
    run.sleep(0.01)
    until = store.steps(rid)[0].output
    run.close("running")
    with Run(store, rid) as again:
        again.sleep(3600)  # replayed: the recorded (past) wake time wins, so this returns at once
    assert store.steps(rid)[0].output == until and len(store.steps(rid)) == 1


def test_cancel_stops_the_next_checkpoint_and_reopening(store: CheckpointStore) -> None:
    rid = run_id()
    ran = []
    with pytest.raises(RunCancelled), Run(store, rid) as run:
        run.step(lambda: 1, name="one")
        assert store.cancel(rid, time.time())
        run.step(lambda: ran.append(2), name="two")
    with pytest.raises(RunCancelled):
        Run(store, rid).open()
    assert store.get(rid).status == "cancelled"


async def test_async_steps_checkpoint_and_replay(store: CheckpointStore) -> None:
    calls = []

    async def fetch(n: int) -> int:
        calls.append(n)
        await asyncio.sleep(0)
        return n * 2

    rid = run_id()
    async with Run(store, rid) as run:
        assert await run.astep(fetch, 2) == 4
        assert await run.astep(lambda: 5, name="sync-inside-async") == 5
        assert (await run.astep(fetch_order, 1)).id == 1
    async with Run(store, rid) as run:
        assert await run.astep(fetch, 2) == 4
        assert await run.astep(lambda: 6, name="sync-inside-async") == 5
        assert isinstance(await run.astep(fetch_order, 1), Order)
    assert calls == [2]


HOLDER = """
import sys, time
from wardgate.sdk.runs import Run
run = Run(sys.argv[1], sys.argv[2], lease=float(sys.argv[3])).open()
run.step(lambda: "held", name="hold")
print("holding", flush=True)
time.sleep(60)
"""


def test_two_processes_on_one_run_one_wins_and_a_dead_holder_is_taken_over(store_url: str, tmp_path: Path) -> None:
    rid = run_id()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, store_url, rid, "60"], stdout=subprocess.PIPE, cwd=REPO, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        store = create(store_url)
        with pytest.raises(RunLocked) as info:
            Run(store, rid).open()
        assert rid in str(info.value) and str(holder.pid) in str(info.value)
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        # Same host, holder process gone: taken over without waiting for the 60 s lease.
        with Run(store, rid) as run:
            assert run.step(lambda: "not run", name="hold") == "held"
            run.complete("done")
        assert store.get(rid).status == "completed"
        store.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


RESUMER = """
import sys, time
from wardgate.sdk.errors import RunLocked
from wardgate.sdk.runs import Run
store, rid, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
while time.time() < start:
    time.sleep(0.001)
try:
    with Run(store, rid) as run:
        run.step(lambda: "side effect", name="work")
        time.sleep(1.0)  # still holding the run when the other process tries
        print("won", flush=True)
except RunLocked as error:
    print(f"locked: {error}", flush=True)
"""


def test_two_processes_resuming_at_once_one_wins_the_other_is_told(store_url: str) -> None:
    rid = run_id()
    setup = create(store_url)
    Run(setup, rid).open().close("running")  # an existing, resumable run
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", RESUMER, store_url, rid, str(start)], stdout=subprocess.PIPE,
                              text=True, cwd=REPO) for _ in range(2)]
    outputs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outputs[1] == "won" and outputs[0].startswith(f"locked: run {rid!r} is held by another process")
    assert [s.name for s in setup.steps(rid)] == ["work"]
    setup.close()
