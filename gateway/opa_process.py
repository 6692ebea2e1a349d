"""A managed OPA: ``opa run --server`` as a child process on loopback, restarted if it dies.

While OPA is down every decision fails closed (``policy_unavailable``); the supervisor brings it
back with a bounded backoff, so the gateway recovers without a restart of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
from pathlib import Path

import aiohttp

from .errors import ConfigError, DependencyUnavailable
from .settings import OpaSettings

log = logging.getLogger("wardgate.opa")

INSTALL_HINT = (
    "the `opa` binary was not found. Run `make run` (it builds the pinned OPA into .bin/), "
    "or install OPA v1 and put it on PATH, or set [opa] binary in wardgate.toml"
)


def find_opa(binary: str) -> str:
    found = shutil.which(binary)
    if not found:
        raise ConfigError(INSTALL_HINT, code="opa_not_found")
    return found


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def opa_command(binary: str, port: int, paths: list[Path]) -> list[str]:
    return [
        binary, "run", "--server", "--addr", f"127.0.0.1:{port}",
        "--disable-telemetry", "--log-level", "error", "--watch",
        "--ignore", "*_test.rego", "--ignore", ".*",
        *[str(p) for p in paths],
    ]


async def wait_healthy(url: str, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    timeout = aiohttp.ClientTimeout(total=1.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while loop.time() < end:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with session.get(f"{url}/health") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise DependencyUnavailable(f"OPA at {url} did not become healthy", code="policy_unavailable")


class ManagedOpa:
    """Owns one OPA child. ``url`` is stable across restarts (same port)."""

    def __init__(self, settings: OpaSettings, log_file: Path) -> None:
        self._settings = settings
        self._binary = find_opa(settings.binary)
        for path in settings.paths:
            if not path.exists():
                raise ConfigError(f"policy path {path} does not exist", code="policy_path_missing")
        self._port = free_loopback_port()
        self._log_file = log_file
        self._process: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self) -> None:
        await self._spawn()
        await wait_healthy(self.url, self._settings.startup_timeout)
        self._supervisor = asyncio.create_task(self._supervise(), name="opa-supervisor")

    async def _spawn(self) -> None:
        self._log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self._log_file, "ab") as log_handle:
            self._process = await asyncio.create_subprocess_exec(
                *opa_command(self._binary, self._port, self._settings.paths),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_handle,
                stderr=log_handle,
            )

    async def _supervise(self) -> None:
        backoff = 0.2
        while not self._stopping:
            assert self._process is not None
            code = await self._process.wait()
            if self._stopping:
                return
            log.warning("OPA exited with %s; restarting in %.1fs", code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            try:
                await self._spawn()
                await wait_healthy(self.url, self._settings.startup_timeout)
                backoff = 0.2
            except (OSError, DependencyUnavailable) as exc:
                log.error("OPA restart failed: %s", exc)

    async def stop(self) -> None:
        self._stopping = True
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
