"""An ASGI app (the MCP SDK's FastMCP) under uvicorn on 127.0.0.1, port 0, in its own thread."""

from __future__ import annotations

import socket
import threading
from typing import Any

import uvicorn


class AsgiServer:
    def __init__(self, app: Any, **config: Any) -> None:
        """``config``: more uvicorn.Config options (ssl_keyfile, ssl_certfile ...)."""
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", **config))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def start(self) -> None:
        self._thread.start()
        for _ in range(200):
            if self._server.started:
                return
            threading.Event().wait(0.05)
        raise RuntimeError("the ASGI server did not start")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
