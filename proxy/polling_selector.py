"""PollingSelector: while a call waits for its intent record, the event loop polls instead of sleeping.

At 1 connection a call waits about 0.5-1 ms for its intent record's commit (another process,
``fdatasync``) with nothing else for the proxy to do. Sleeping through that wait is costly on a
virtual machine: the vCPU halts, and waking it again, and running the rest of the call on it, is
slower than the wait itself (docs/benchmarks.md "The wait at 1 connection"). So while the audit
client says a commit is awaited, ``select`` first polls its sockets with a zero timeout for up to
``limit`` seconds, and only then sleeps as usual. Only while one or two calls wait (at 1
connection: always one): when more do, the writer commits them together, the loop's next work is
near anyway, and the CPU that polling would take is what a loaded host is short of.

Nothing waits longer for it: a ready socket ends the polling at once, and the polling never runs
past the timeout the loop asked for (its next timer). What it costs is CPU: up to ``limit`` per
idle moment, only while a commit is awaited; with other work to do the loop does not get here.
``[audit] commit_poll = "0"`` turns it off.
"""

from __future__ import annotations

import selectors
import time
from typing import Any, Protocol

POLL_WHILE_AT_MOST = 2  # commits awaited at once


class Waits(Protocol):
    awaiting: int  # commits somebody waits for right now


class PollingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    def __init__(self, limit: float) -> None:
        super().__init__()
        self._limit = limit
        self._waits: Waits | None = None

    def poll_while(self, waits: Waits) -> None:
        """Poll while ``waits.awaiting`` is 1 or 2 (the gateway's audit client, once it has started)."""
        self._waits = waits

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        waits = self._waits
        if (waits is None or not 0 < waits.awaiting <= POLL_WHILE_AT_MOST or self._limit <= 0
                or (timeout is not None and timeout <= 0)):
            return super().select(timeout)  # type: ignore[no-any-return]
        started = time.perf_counter()
        budget = self._limit if timeout is None else min(self._limit, timeout)
        while True:
            ready = super().select(0)
            spent = time.perf_counter() - started
            if ready or spent >= budget:
                break
        if ready or (timeout is not None and spent >= timeout):
            return ready  # type: ignore[no-any-return]
        return super().select(None if timeout is None else timeout - spent)  # type: ignore[no-any-return]
