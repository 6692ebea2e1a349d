"""A counting upstream on loopback: POST /allowed/charge counts side effects and can be held open."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web


@dataclass
class CountingUpstream:
    """Each POST to ``/allowed/charge`` (or ``/approve/charge``) is one side effect. While ``hold`` is set, a POST waits
    (after being counted) until ``release()``; ``arrived`` fires when a held POST has been counted.
    ``hold_file``: hold instead while that file does not exist (for tests driving other processes)."""

    posts: list[bytes] = field(default_factory=list)
    hold: bool = False
    hold_file: Path | None = None
    arrived: threading.Event = field(default_factory=threading.Event)
    port: int = 0
    _release: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _charge(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.posts.append(body)
        number = len(self.posts)
        self.arrived.set()
        if self.hold:
            assert self._release is not None
            await self._release.wait()
        if self.hold_file is not None:
            while not self.hold_file.exists():
                await asyncio.sleep(0.02)
        return web.json_response({"charge": number, "echo": json.loads(body or b"null"),
                                  "key": request.headers.get("Idempotency-Key")}, status=201)

    async def _read(self, request: web.Request) -> web.Response:
        return web.json_response({"path": request.path_qs})

    def release(self) -> None:
        assert self._loop is not None and self._release is not None
        self._loop.call_soon_threadsafe(self._release.set)

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._release = asyncio.Event()
            app = web.Application()
            app.router.add_post("/allowed/charge", self._charge)
            app.router.add_post("/approve/charge", self._charge)
            app.router.add_get("/allowed/{tail:.*}", self._read)
            runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10)

    def stop(self) -> None:
        if self._loop:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(10)
