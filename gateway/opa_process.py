"""A managed OPA: ``opa run --server`` as a child process, restarted if it dies.

It listens on a Unix socket in the gateway's private run folder, never on a TCP port
(gateway/opa_address.py says why): only the gateway's uid can query it or change what it serves.

While OPA is down every decision fails closed (``policy_unavailable``); the supervisor brings it
back with a bounded backoff, so the gateway recovers without a restart of its own.

Policy changes are not loaded by OPA's own ``--watch``: it drops a module that fails to compile
and serves undefined decisions until the file is fixed. Instead :meth:`ManagedOpa.replace` starts
a second OPA on the files as they are now; only once it is healthy does it take over (the
policy client is pointed at it and the old one stops after in-flight queries had their time).
A policy that does not compile never gets past the new process, and the old one keeps serving.

OPA's Go runtime gets one thread per two proxy workers (:func:`opa_environment`) unless told
otherwise. At low load the gateway's queries come one at a time with idle gaps, and on each wake-up
Go's scheduler also spins up the other threads it may use, looking for work. Behind one worker at
one connection OPA spent 1.07 ms of CPU per decision with 1 thread against 1.32 ms with 2 (medians
of 6 interleaved runs; no change at 8 connections), and behind two busy workers 0.65 ms against
0.72-0.75 (docs/benchmarks.md). One worker's event loop is one core and OPA's work per decision is
a fraction of the proxy's per call, so a thread keeps up with two workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import aiohttp

from .errors import ConfigError, DependencyUnavailable
from .opa_address import opa_session, unix_url
from .settings import OpaSettings
from .socket_folder import remove_dead_sockets, socket_folder

log = logging.getLogger("wardgate.opa")
_SOCKET = "opa-{:03d}.sock"  # a reload's OPA gets the next number: the old one serves on meanwhile

INSTALL_HINT = (
    "the `opa` binary was not found. Run `make run` (it builds the pinned OPA into .bin/), "
    "or install OPA v1 and put it on PATH, or set [opa] binary in wardgate.toml"
)


def find_opa(binary: str) -> str:
    found = shutil.which(binary)
    if not found:
        raise ConfigError(INSTALL_HINT, code="opa_not_found")
    return found


def opa_command(binary: str, socket_path: Path, paths: list[Path]) -> list[str]:
    return [
        binary, "run", "--server", "--addr", unix_url(str(socket_path)), "--unix-socket-perm", "600",
        "--disable-telemetry", "--log-level", "error",
        "--ignore", "*_test.rego", "--ignore", ".*",
        *[str(p) for p in paths],
    ]


# Runs in the child before it becomes OPA (same pid): asks Linux to send it SIGTERM when the gateway
# dies (prctl PR_SET_PDEATHSIG, kept across exec), so an OPA never outlives a gateway that was
# killed; exits at once if the gateway died before the request was made. A kernel or sandbox that
# refuses the request still gets its OPA, untied (as before), with the reason in logs/opa.log.
_TIED_TO_PARENT = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    if ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM)) != 0:\n"
    "        print('wardgate: OPA not tied to the gateway: prctl failed,', os.strerror(ctypes.get_errno()), file=sys.stderr)\n"
    "except (OSError, AttributeError) as error:\n"
    "    print('wardgate: OPA not tied to the gateway:', error, file=sys.stderr)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(3)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def tied_to_this_process(command: list[str]) -> list[str]:
    """``command``, started so that it ends when this process dies (Linux); unchanged elsewhere."""
    if sys.platform != "linux":
        return command
    return [sys.executable, "-I", "-S", "-c", _TIED_TO_PARENT, str(os.getpid()), *command]


def opa_environment(threads: int | None, workers: int, environ: Mapping[str, str]) -> dict[str, str]:
    """The managed OPA's environment: ``environ`` with GOMAXPROCS set to ``threads`` if given, else
    kept if ``environ`` has it, else one per two proxy workers (rounded up) and at most one per CPU.

    One Go thread answered about 2,400 decisions/s here, back to back, and 1,400-1,500/s at the CPU
    per decision it spends behind a busy gateway; a worker at full load asks 500-600/s. More threads
    than that need are not free: Go wakes its idle ones to look for work on every query. Behind 2
    workers, one thread cost OPA 10-13% less CPU per decision than two (docs/benchmarks.md)."""
    env = dict(environ)
    if threads is not None:
        env["GOMAXPROCS"] = str(threads)
    elif "GOMAXPROCS" not in env:
        env["GOMAXPROCS"] = str(max(1, min(-(-workers // 2), usable_cpus())))
    return env


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which a cpuset or taskset narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


async def nondeterministic_builtins(binary: str, timeout: float = 10.0) -> frozenset[str]:
    """The builtins this OPA binary marks non-deterministic (``opa capabilities --current``).

    Raises ``DependencyUnavailable`` when the binary does not answer with its capabilities."""
    process = await asyncio.create_subprocess_exec(
        binary, "capabilities", "--current",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(timeout):
            out, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise DependencyUnavailable("opa capabilities did not answer in time", code="policy_unavailable") from None
    try:
        builtins = json.loads(out)["builtins"]
        return frozenset(item["name"] for item in builtins if item.get("nondeterministic"))
    except (ValueError, KeyError, TypeError):
        raise DependencyUnavailable(f"opa capabilities exited {process.returncode} without its list",
                                    code="policy_unavailable") from None


async def wait_healthy(url: str, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    session, base = opa_session(url, 1.0)
    async with session:
        while loop.time() < end:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with session.get(f"{base}/health") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise DependencyUnavailable(f"OPA at {url} did not become healthy", code="policy_unavailable")


class ManagedOpa:
    """Owns one OPA child. ``url`` (``unix://`` and a socket in ``folder``, which must be private)
    is stable across restarts; a reload's OPA gets a socket of its own."""

    def __init__(self, settings: OpaSettings, log_file: Path, folder: Path, workers: int = 1) -> None:
        self._settings = settings
        self._environment = opa_environment(settings.threads, workers, os.environ)
        self._binary = find_opa(settings.binary)
        for path in settings.paths:
            if not path.exists():
                raise ConfigError(f"policy path {path} does not exist", code="policy_path_missing")
        self._folder, self._own_folder = socket_folder(folder, _SOCKET.format(0), "wardgate-opa-")
        self._sockets = 0
        self._socket = self._next_socket()
        self._log_file = log_file
        self._process: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._retiring: list[asyncio.subprocess.Process | None] = []
        # Told when the OPA serving stops (it died) and when a restarted one serves (it may have
        # loaded files that changed since): the decision cache must not outlive either.
        self.on_change: Callable[[], None] | None = None

    @property
    def url(self) -> str:
        return unix_url(str(self._socket))

    def _next_socket(self) -> Path:
        path = self._folder / _SOCKET.format(self._sockets)
        self._sockets += 1
        return path

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self) -> None:
        """Start OPA; ``policy_rejected`` with OPA's own message if it exits (typically a policy
        that does not compile), ``policy_unavailable`` if it runs but does not answer in time."""
        logged = await asyncio.to_thread(_size, self._log_file)  # the log is kept across starts: read this one's lines
        if self._own_folder is None:  # the run folder: sockets of an OPA killed with its gateway may be there
            await asyncio.to_thread(remove_dead_sockets, self._folder, _SOCKET.replace("{:03d}", "*"))
        await self._spawn()
        assert self._process is not None
        try:
            await _healthy_or_exited(self._process, self.url, self._settings.startup_timeout)
        except DependencyUnavailable:
            if self._process.returncode is None:
                raise DependencyUnavailable(f"OPA at {self.url} did not become healthy", code="policy_unavailable") from None
            message = await asyncio.to_thread(_opa_error, self._log_file, "OPA did not start with the policies", logged)
            raise ConfigError(message, code="policy_rejected") from None
        self._supervisor = asyncio.create_task(self._supervise(), name="opa-supervisor")

    async def _spawn(self) -> None:
        self._process = await self._launch(self._socket, self._log_file)

    async def _launch(self, socket_path: Path, log_file: Path) -> asyncio.subprocess.Process:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        socket_path.unlink(missing_ok=True)  # left by an OPA that was killed (not left to the binary to remove)
        with open(log_file, "ab") as log_handle:
            return await asyncio.create_subprocess_exec(
                *tied_to_this_process(opa_command(self._binary, socket_path, self._settings.paths)),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_handle,
                stderr=log_handle,
                env=self._environment,
            )

    async def replace(self, grace: float) -> str:
        """Start an OPA on the current files; if it comes up healthy it takes over. Returns its URL.

        Raises ``ConfigError`` (``policy_rejected``) with OPA's own message when it does not start,
        typically a policy that fails to compile; the running OPA is untouched then.
        """
        socket_path = self._next_socket()
        attempt_log = self._log_file.with_name("opa-reload.log")
        attempt_log.unlink(missing_ok=True)
        process = await self._launch(socket_path, attempt_log)
        try:
            await _healthy_or_exited(process, unix_url(str(socket_path)), self._settings.startup_timeout)
        except DependencyUnavailable:
            if process.returncode is None:
                process.kill()
            await process.wait()
            socket_path.unlink(missing_ok=True)
            message = await asyncio.to_thread(_opa_error, attempt_log, "OPA refused the new policies")
            raise ConfigError(message, code="policy_rejected") from None
        old, old_supervisor = self._process, self._supervisor
        self._process, self._socket = process, socket_path
        self._supervisor = asyncio.create_task(self._supervise(), name="opa-supervisor")
        if old_supervisor:
            old_supervisor.cancel()
        self._retiring.append(old)
        asyncio.get_running_loop().call_later(grace, _terminate, old)
        return self.url

    async def _supervise(self) -> None:
        backoff = 0.2
        while not self._stopping:
            assert self._process is not None
            code = await self._process.wait()
            if self._stopping:
                return
            log.warning("OPA exited with %s; restarting in %.1fs", code, backoff)
            self._changed()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            try:
                await self._spawn()
                await wait_healthy(self.url, self._settings.startup_timeout)
                backoff = 0.2
                self._changed()
            except (OSError, DependencyUnavailable) as exc:
                log.error("OPA restart failed: %s", exc)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def stop(self) -> None:
        self._stopping = True
        for retiring in self._retiring:
            _terminate(retiring)
        if self._supervisor:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._process and self._process.returncode is None:
            self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), 5.0)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        for number in range(self._sockets):  # OPA removes its socket when it stops; not when killed
            (self._folder / _SOCKET.format(number)).unlink(missing_ok=True)
        if self._own_folder is not None:
            shutil.rmtree(self._own_folder, ignore_errors=True)


def _terminate(process: asyncio.subprocess.Process | None) -> None:
    if process is not None and process.returncode is None:
        process.terminate()


async def _healthy_or_exited(process: asyncio.subprocess.Process, url: str, deadline: float) -> None:
    waiter = asyncio.create_task(process.wait())
    healthy = asyncio.create_task(wait_healthy(url, deadline))
    done, _ = await asyncio.wait({waiter, healthy}, return_when=asyncio.FIRST_COMPLETED)
    if healthy in done and healthy.exception() is None:
        waiter.cancel()
        return
    healthy.cancel()
    waiter.cancel()
    raise DependencyUnavailable("the new OPA did not start", code="policy_unavailable")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _opa_error(log_file: Path, what: str, offset: int = 0) -> str:
    """``what``, then OPA's complaint (its log from ``offset`` on) without the noise (root warning,
    deprecations), as one readable message."""
    try:
        with open(log_file, "rb") as log_handle:
            log_handle.seek(offset)
            lines = log_handle.read().decode(errors="replace").splitlines()
    except OSError:
        return what
    wanted = [line for line in lines if line.strip() and "root privileges" not in line and "deprecated" not in line]
    return f"{what}: " + (" | ".join(wanted[-6:]) or "no message")
