"""PollingSelector polls only while a commit is awaited, hands over a ready socket at once and never
keeps the loop past the timeout it asked for (its next timer). ``[audit] commit_poll`` sets it.

The polling shows as CPU time: a selector that sleeps uses next to none while it waits."""

from __future__ import annotations

import asyncio
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wardgate.gateway.errors import ConfigError
from wardgate.gateway.settings import load_settings
from wardgate.proxy.polling_selector import POLL_WHILE_AT_MOST, PollingSelector


class Waits:
    awaiting = 0


@pytest.fixture
def ends() -> Iterator[tuple[socket.socket, socket.socket]]:
    here, there = socket.socketpair()
    yield here, there
    here.close()
    there.close()


def selector_on(sock: socket.socket, limit: float, awaiting: int) -> PollingSelector:
    selector = PollingSelector(limit)
    selector.register(sock, selectors.EVENT_READ)
    waits = Waits()
    waits.awaiting = awaiting
    selector.poll_while(waits)
    return selector


def cpu_spent_selecting(selector: PollingSelector, timeout: float) -> tuple[float, list[object]]:
    started = time.process_time()
    ready = selector.select(timeout)
    return time.process_time() - started, ready


def test_it_polls_while_a_commit_is_awaited_and_sleeps_otherwise(ends: tuple[socket.socket, socket.socket]) -> None:
    here, _ = ends
    polled, ready = cpu_spent_selecting(selector_on(here, 0.2, awaiting=1), 0.3)
    assert ready == [] and polled >= 0.05  # polled for up to 0.2 s, then slept the rest
    slept, ready = cpu_spent_selecting(selector_on(here, 0.2, awaiting=0), 0.3)
    assert ready == [] and slept < 0.05
    off, ready = cpu_spent_selecting(selector_on(here, 0.0, awaiting=1), 0.3)  # commit_poll = "0"
    assert ready == [] and off < 0.05


def test_it_does_not_poll_while_many_calls_wait(ends: tuple[socket.socket, socket.socket]) -> None:
    """Two calls waiting still poll; more wait for a commit they share, on a loop with work near."""
    here, _ = ends
    polled, _ = cpu_spent_selecting(selector_on(here, 0.2, awaiting=POLL_WHILE_AT_MOST), 0.3)
    assert polled >= 0.05
    slept, ready = cpu_spent_selecting(selector_on(here, 0.2, awaiting=POLL_WHILE_AT_MOST + 1), 0.3)
    assert ready == [] and slept < 0.05


def test_a_ready_socket_ends_the_polling(ends: tuple[socket.socket, socket.socket]) -> None:
    here, there = ends
    selector = selector_on(here, 5.0, awaiting=1)
    writer = threading.Timer(0.05, there.send, args=(b"x",))
    writer.start()
    started = time.monotonic()
    ready = selector.select(None)
    writer.join()
    assert [key.fileobj for key, _ in ready] == [here]
    assert time.monotonic() - started < 2.5  # not the 5 s the polling may last


def test_it_never_runs_past_the_loops_timeout(ends: tuple[socket.socket, socket.socket]) -> None:
    here, _ = ends
    started = time.monotonic()
    assert selector_on(here, 5.0, awaiting=1).select(0.05) == []
    assert time.monotonic() - started < 2.5


def test_an_event_loop_on_it_runs_its_timers_while_polling() -> None:
    selector = PollingSelector(5.0)
    waits = Waits()
    waits.awaiting = 1
    selector.poll_while(waits)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        fired = loop.create_future()
        loop.call_later(0.05, fired.set_result, loop.time())
        return await asyncio.wait_for(fired, 2.5)

    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selector)) as runner:
        assert runner.run(main()) > 0


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("1ms", 0.001), ("2ms", 0.002), ("2", None)])
def test_commit_poll_is_a_short_duration(tmp_path: Path, value: str, seconds: float | None) -> None:
    (tmp_path / "wardgate.toml").write_text(f'[audit]\ncommit_poll = "{value}"\n')
    if seconds is None:  # two seconds: far past the limit
        with pytest.raises(ConfigError):
            load_settings(environ={}, cwd=tmp_path)
        return
    assert load_settings(environ={}, cwd=tmp_path).audit.commit_poll == seconds


def test_a_commit_poll_long_enough_to_burn_a_core_is_refused(tmp_path: Path) -> None:
    (tmp_path / "wardgate.toml").write_text('[audit]\ncommit_poll = "1s"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={}, cwd=tmp_path)
    assert caught.value.code == "config_invalid" and "audit.commit_poll" in caught.value.message
    assert load_settings(environ={}, cwd=tmp_path / "none").audit.commit_poll == 0.002  # the default
