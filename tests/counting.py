"""A counting upstream on loopback: POST /allowed/charge counts side effects and can be held open."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from support import LoopbackServer


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
    _server: LoopbackServer | None = None

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
        assert self._server is not None and self._server.loop is not None and self._release is not None
        self._server.loop.call_soon_threadsafe(self._release.set)

    def start(self) -> None:
        def build() -> web.Application:
            self._release = asyncio.Event()
            app = web.Application()
            app.router.add_post("/allowed/charge", self._charge)
            app.router.add_post("/approve/charge", self._charge)
            app.router.add_get("/allowed/{tail:.*}", self._read)
            return app

        self._server = LoopbackServer(build, [None])
        (self.port,) = self._server.start()

    def stop(self) -> None:
        if self._server:
            self._server.stop()
