"""A WebSocket upstream for scrubbing tests: aiohttp on 127.0.0.1 (plain and TLS), port 0.

``/allowed/ws/{name}`` records the handshake and every message it receives, and answers commands
sent as text messages, using the credential it received in ``Authorization: Bearer …``:

- ``text FORM`` / ``binary FORM``: one message ``<FORM:value>`` holding that form of the credential
  (``FORMS``), as text or as binary (binary with non-UTF-8 bytes around it);
- ``fragmented FORM``: the same text message in two raw frames split inside the credential
  (a TEXT frame without FIN, then a CONTINUATION frame), so only reassembly can find it;
- ``say TEXT``: ``TEXT`` as it is; a binary message from the client comes back as it is;
- ``big N``: one text message of N bytes, all alike (compressed, a few hundred bytes on the wire).

With ``?echo_header`` the 101 carries the credential in an ``X-Echo`` header as well.

``/allowed/odd-extension/{name}`` accepts the upgrade naming an extension nobody can decode.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, quote_plus

import trustme
from aiohttp import WSMsgType, web

from support import LoopbackServer, server_tls

FORMS: dict[str, Callable[[str], str]] = {
    "plain": lambda value: value,
    "base64": lambda value: base64.b64encode(value.encode()).decode(),
    "base64_unpadded": lambda value: base64.b64encode(value.encode()).decode().rstrip("="),
    "base64_urlsafe": lambda value: base64.urlsafe_b64encode(value.encode()).decode(),
    "base64_urlsafe_unpadded": lambda value: base64.urlsafe_b64encode(value.encode()).decode().rstrip("="),
    "url": lambda value: quote(value, safe=""),
    "url_plus": lambda value: quote_plus(value, safe=""),
    "json": lambda value: json.dumps(value)[1:-1],
}
BINARY_EDGES = (b"\x00\xff\xfe<", b">\x80\x00")


def raw_frame(fin: bool, opcode: int, payload: bytes) -> bytes:
    """An unmasked server frame (RFC 6455 §5.2), payloads under 64 KiB."""
    head = (0x80 if fin else 0) | opcode
    if len(payload) < 126:
        return struct.pack("!BB", head, len(payload)) + payload
    return struct.pack("!BBH", head, 126, len(payload)) + payload


@dataclass
class Session:
    headers: dict[str, str]
    received: list[str | bytes] = field(default_factory=list)
    compressed: int = 0  # the permessage-deflate window bits negotiated with wardgate; 0: none


class WebSocketUpstream:
    def __init__(self, ca: trustme.CA) -> None:
        self.ca = ca
        self.sessions: dict[str, Session] = {}
        self.tls_port = 0
        self._server: LoopbackServer | None = None

    def url(self, path: str) -> str:
        return f"wss://localhost:{self.tls_port}{path}"

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if "echo_header" in request.query:
            socket.headers["X-Echo"] = token  # the credential echoed in the 101's headers too
        await socket.prepare(request)
        session = self.sessions[request.match_info["name"]] = Session(dict(request.headers), compressed=socket.compress)
        async for message in socket:
            if message.type == WSMsgType.BINARY:
                session.received.append(message.data)
                await socket.send_bytes(message.data)
                continue
            if message.type != WSMsgType.TEXT:
                break
            session.received.append(message.data)
            command, _, argument = message.data.partition(" ")
            if command == "say":
                await socket.send_str(argument)
            elif command == "big":  # one text message of that many bytes: deflates to almost nothing
                await socket.send_str("a" * int(argument))
            elif command == "text":
                await socket.send_str(f"<{argument}:{FORMS[argument](token)}>")
            elif command == "binary":
                await socket.send_bytes(BINARY_EDGES[0] + FORMS[argument](token).encode() + BINARY_EDGES[1])
            elif command == "fragmented":
                whole = f"<{argument}:{FORMS[argument](token)}>".encode()
                middle = len(argument) + 2 + len(FORMS[argument](token)) // 2
                assert request.transport is not None and not socket.compress
                request.transport.write(raw_frame(False, 0x1, whole[:middle]) + raw_frame(True, 0x0, whole[middle:]))
        return socket

    async def _odd_extension(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(compress=False)
        socket.headers["Sec-WebSocket-Extensions"] = "x-wardgate-unreadable"  # kept: prepare() adds, never drops
        await socket.prepare(request)
        self.sessions[request.match_info["name"]] = Session(dict(request.headers))
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                await socket.send_str(message.data)
        return socket

    async def _probe(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    def start(self) -> None:
        def build() -> web.Application:
            app = web.Application()
            app.router.add_get("/allowed/ws/{name}", self._ws)
            app.router.add_get("/allowed/odd-extension/{name}", self._odd_extension)
            app.router.add_get("/allowed/probe", self._probe)
            return app

        self._server = LoopbackServer(build, [server_tls(self.ca)])
        (self.tls_port,) = self._server.start()

    def stop(self) -> None:
        if self._server:
            self._server.stop()
