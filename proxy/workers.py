"""``wardgate up --workers N``: N proxy processes accepting on one port (SO_REUSEPORT).

The first process is the whole gateway (admin API, managed OPA, demo echo) and also a proxy worker;
it starts N-1 more processes that run only the proxy, on the same address, against the same OPA and
the same state under ``home`` (agents, revocations, vault, idempotency, approvals), the same
per-agent request buckets and tunnel counts (proxy/agent_counts.py), and the same audit writer
process: each worker sends its records to the first process's writer over a Unix socket in the
private run folder, so all of them share one hash chain and one group commit. The kernel spreads
new client connections over the listening sockets; a connection stays with the worker that
accepted it, so the per-connection state (the identity a CONNECT tunnel proved) stays where it was
proven. A worker that dies is not restarted; its tunnels' counts are released (``on_exit``). A
worker never outlives the first process (``die_with_parent``).

mitmproxy has no option for SO_REUSEPORT, so ``listen_with_reuse_port`` replaces the regular-mode
server's ``listen`` in this process only; it is called only when ``--workers`` is above 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from mitmproxy.proxy.mode_servers import RegularInstance

log = logging.getLogger("wardgate.proxy")
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class WorkerOf:
    """What a worker is told by the first process: where to listen, which OPA, what to protect."""

    proxy: str  # HOST:PORT to bind: the configured host (every address it names) and the port the first process got
    opa: str  # the first process's OPA (managed or external)
    admin: str  # the admin API, which the proxy must never reach
    echo: str | None  # the demo echo service, which the proxy may reach
    audit: str  # the first process's audit writer socket (gateway/audit_process.AuditLink)
    counts: str  # the per-agent counts every worker shares (proxy/agent_counts.SharedCounts)
    workers: int  # how many proxy processes, the first one included
    parent: int  # the first process: a worker does not outlive it (die_with_parent)
    index: int = 0  # this worker's place among them (the first process is 0)
    opa_managed: bool = False  # the first process runs that OPA: it says when it changes (policy_follow)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "WorkerOf":
        return cls(**json.loads(text))


def listen_with_reuse_port() -> None:
    """From now on this process's proxy listens with SO_REUSEPORT, so workers can share the port."""

    async def listen(self: Any, host: str, port: int) -> list[asyncio.Server]:
        return [await reuse_port_server(self.handle_stream, host, port)]

    RegularInstance.listen = listen  # type: ignore[method-assign]


async def reuse_port_server(handle_stream: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                            host: str, port: int) -> asyncio.Server:
    """A server on ``host:port`` that other processes may bind too (SO_REUSEPORT).

    Bound as mitmproxy binds without workers: every address ``host`` names (a name: each address
    it resolves to; ``""``: every interface, IPv4 and IPv6), all on one port, also when ``port`` is
    0. asyncio makes each socket with the protocol the resolver names, TCP, so it turns Nagle's
    algorithm off on the connections they accept (with Nagle on, a response written in two pieces
    waited for the client's delayed ACK: every call through a worker took 40 ms more)."""
    for attempt in range(3):
        chosen = port or _free_port()
        try:
            return await asyncio.start_server(handle_stream, host, chosen, reuse_port=True, backlog=1024)
        except OSError:
            if port or attempt == 2:  # a free port for IPv4 may be taken on IPv6: try another
                raise
    raise AssertionError("unreachable")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return int(probe.getsockname()[1])


def die_with_parent(parent: int) -> None:
    """Have the kernel send this worker SIGTERM when the first process dies, however it dies.

    A gateway killed with -9 must not leave workers behind: they would keep its port (a new gateway
    shares it through SO_REUSEPORT) and refuse every call they are given, their audit writer gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # it died before the kernel was told
        os.kill(os.getpid(), signal.SIGTERM)


def worker_argv() -> list[str]:
    """This process's command line without ``--workers``: the workers load the same settings."""
    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            argv.append(arg)
    return [sys.executable, "-m", "wardgate.gateway.cli", *argv]


@contextlib.asynccontextmanager
async def run_workers(count: int, of: WorkerOf, drain: float,
                      on_exit: Callable[[int], None]) -> AsyncIterator[list[int]]:
    """Start ``count`` proxy-only workers; stop them (SIGTERM, then kill) when the block ends.

    ``drain``: how long a worker may take to hand its last audit records over (AuditLink.stop);
    it gets that and ten seconds more before it is killed. ``on_exit(index)`` runs when a worker
    exits before that."""
    processes = [
        await asyncio.create_subprocess_exec(*worker_argv(), "--worker-of", replace(of, index=index).to_json(),
                                             stdout=asyncio.subprocess.PIPE)
        for index in range(1, count + 1)
    ]
    watchers: list[asyncio.Task[None]] = []
    try:
        for process in processes:  # each says "ready" once it accepts on the shared port
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT)
            if line.strip() != b"ready":
                raise RuntimeError(f"proxy worker {process.pid} did not start (exit {process.returncode})")
        watchers = [asyncio.create_task(_watch(process, index, on_exit), name=f"worker-{index}")
                    for index, process in enumerate(processes, start=1)]
        yield [p.pid for p in processes]
    finally:
        for watcher in watchers:
            watcher.cancel()
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), drain + 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _watch(process: asyncio.subprocess.Process, index: int, on_exit: Callable[[int], None]) -> None:
    code = await process.wait()
    log.error("proxy worker %s (pid %s) exited (%s); it is not restarted, its tunnels are released",
              index, process.pid, code)
    on_exit(index)
