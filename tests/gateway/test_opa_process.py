"""The managed OPA's Go runtime threads: one per two proxy workers unless the operator says otherwise."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from support import environment_of, start_gateway
from wardgate.gateway.opa_process import opa_environment


def test_one_thread_per_two_workers_at_most_one_per_cpu() -> None:
    cpus = len(os.sched_getaffinity(0))
    assert opa_environment(None, 1, {})["GOMAXPROCS"] == "1"
    assert opa_environment(None, 2, {})["GOMAXPROCS"] == "1"
    assert opa_environment(None, 3, {})["GOMAXPROCS"] == str(min(2, cpus))
    assert opa_environment(None, 64, {})["GOMAXPROCS"] == str(min(32, cpus))


def test_the_setting_wins_then_the_environment() -> None:
    assert opa_environment(3, 1, {"GOMAXPROCS": "7"})["GOMAXPROCS"] == "3"
    assert opa_environment(None, 1, {"GOMAXPROCS": "7"})["GOMAXPROCS"] == "7"


def test_the_rest_of_the_environment_is_passed_on() -> None:
    env = opa_environment(None, 1, {"PATH": "/bin", "HOME": "/home/op"})
    assert env == {"PATH": "/bin", "HOME": "/home/op", "GOMAXPROCS": "1"}


@pytest.mark.parametrize("threads", [None, 3])
def test_the_running_opa_gets_its_threads(opa_binary: str, tmp_path: Path, threads: int | None) -> None:
    env = {} if threads is None else {"WARDGATE_OPA__THREADS": str(threads)}
    gw = start_gateway(tmp_path / "gw", env=env)
    try:
        expected = str(threads) if threads else os.environ.get("GOMAXPROCS", "1")
        assert environment_of(int(gw.listeners["opa_pid"]), "GOMAXPROCS") == expected
    finally:
        gw.stop()


def gone(pid: int) -> bool:
    """No such process, or one that has exited and waits only to be reaped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def test_the_managed_opa_does_not_outlive_a_killed_gateway(opa_binary: str, tmp_path: Path) -> None:
    gw = start_gateway(tmp_path / "gw")
    opa = int(gw.listeners["opa_pid"])
    try:
        assert Path(f"/proc/{opa}/exe").resolve().name == "opa", "the trampoline became OPA, same pid"
        gw.process.send_signal(signal.SIGKILL)
        gw.process.wait(10)
        deadline = time.monotonic() + 10
        while not gone(opa) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(opa), "OPA still runs after its gateway was killed"
    finally:
        gw.stop()
        if not gone(opa):
            os.kill(opa, signal.SIGKILL)
