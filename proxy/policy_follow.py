"""Every proxy process asks the OPA wardgate manages, and reuses decisions only from the policy it serves.

The first process owns the managed OPA. When that OPA is replaced (a policy reload starts a new one
on another socket), dies or comes back after a restart, :meth:`PolicyFollower.opa_changed` empties and
re-keys this process's decision cache (:meth:`PolicyClient.read_policy`) and sends SIGHUP to each
worker of ``wardgate up --workers N``. A worker's SIGHUP runs :meth:`PolicyFollower.follow`: it
reads the OPA's address from ``run/listeners.json`` (the first process rewrites it, on a thread,
before signalling; one change at a time, in order), points its policy client there and re-keys its
own cache. (The managed OPA listens on a Unix socket in the private run folder, so there is no port
for the proxy to guard: gateway/opa_address.py.)
Until the signal arrives a worker keeps asking the OPA it knew, which serves on for the grace period
of a reload (``[opa] timeout`` + 2 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from wardgate.gateway.policy import PolicyClient

log = logging.getLogger("wardgate.policy")


class PolicyFollower:
    def __init__(self, policy: PolicyClient, listeners_file: Path) -> None:
        self._policy = policy
        self._listeners_file = listeners_file
        self._tasks: set[asyncio.Task[None]] = set()
        self._telling = asyncio.Lock()  # the workers hear of changes one at a time, in order
        self.workers: list[int] = []  # the first process: pids of the workers to tell

    def opa_changed(self, rewrite: Callable[[], None] | None = None) -> None:
        """The first process: its managed OPA was replaced, died or was restarted. ``rewrite``
        (blocking: it runs on a thread) updates ``run/listeners.json`` before the workers are told."""
        self._policy.cache.scope(None, "OPA changed; reading what it serves")  # before any other call is decided
        self._run(self._policy.read_policy())
        self._run(self._tell_workers(rewrite))

    async def _tell_workers(self, rewrite: Callable[[], None] | None) -> None:
        async with self._telling:
            if rewrite is not None:
                try:
                    await asyncio.to_thread(rewrite)
                except (OSError, ValueError, TypeError) as error:  # the workers still re-read what is there
                    log.error("cannot rewrite %s (%s)", self._listeners_file, error)
            for pid in self.workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGHUP)

    def follow(self) -> None:
        """A worker, told by the first process that its OPA changed."""
        self._policy.cache.scope(None, "OPA changed; reading what it serves")
        self._run(self._follow())

    async def _follow(self) -> None:
        try:
            url = json.loads(await asyncio.to_thread(self._listeners_file.read_text))["opa"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.error("cannot read the OPA address from %s (%s); decision cache off", self._listeners_file, error)
            self._policy.cache.scope(None, "the first process's OPA address is unknown")
            return
        if url != self._policy.url:
            await self._policy.retarget(url)
            log.warning("following the first process to the OPA at %s", url)
        await self._policy.read_policy()

    def _run(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name="policy-follow")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
