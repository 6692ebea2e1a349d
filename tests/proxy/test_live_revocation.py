"""Revocation and expiry reach connections that are already open, with real clients:
a kept-alive HTTP/1.1 connection, a CONNECT tunnel (TLS inside), a WebSocket and an SSE stream.

The revocation goes through the admin API; the connection of the revoked identity must end,
while a connection of another identity on the same gateway keeps working.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import jwt
import pytest
import requests
import trustme
from aiohttp import web

from support import Gateway, Upstream, start_gateway

WAIT = 10.0  # generous bound for "closed": the sweep and the refresh run every second or faster


class StreamingUpstream:
    """aiohttp on 127.0.0.1: /allowed/ws (echo WebSocket), /allowed/sse (an event every 100 ms)."""

    def __init__(self, ca: trustme.CA) -> None:
        self.ca = ca
        self.port = 0
        self.tls_port = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        socket_ = web.WebSocketResponse()
        await socket_.prepare(request)
        async for message in socket_:
            await socket_.send_str(f"echo {message.data}")
        return socket_

    async def sse(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        for n in range(600):
            await response.write(f"data: {n}\n\n".encode())
            await asyncio.sleep(0.1)
        return response

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_get("/allowed/ws", self.ws)
            app.router.add_get("/allowed/sse", self.sse)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ca.issue_cert("localhost").configure_cert(context)
            tls = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
            loop.run_until_complete(tls.start())
            self.tls_port = tls._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())  # cancels the endless SSE handler cleanly

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10)

    def stop(self) -> None:
        if self._loop:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


@pytest.fixture(scope="module")
def streams(test_ca: trustme.CA) -> Iterator[StreamingUpstream]:
    server = StreamingUpstream(test_ca)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(opa_binary: str, tmp_path_factory: pytest.TempPathFactory, acme_policy: Path, upstream_ca_file: Path) -> Iterator[Gateway]:
    gateway = start_gateway(
        tmp_path_factory.mktemp("live"), policy_paths=[acme_policy], upstream_ca=upstream_ca_file,
        extra_config="\n[identity]\nleeway = 0\n",
    )
    yield gateway
    gateway.stop()


def agent_token(gw: Gateway, ttl: float = 300) -> str:
    name = f"live-{uuid.uuid4().hex[:8]}"
    gw.create_agent(name, "acme", ["read"])
    return gw.mint(name, ttl=ttl)


def revoke_token(gw: Gateway, token: str) -> None:
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    response = requests.post(f"{gw.admin}/v1/revocations", json={"kind": "token", "subject": jti, "reason": "test"},
                             headers={"Authorization": f"Bearer {gw.admin_token}"}, timeout=10)
    assert response.status_code == 201, response.text


def read_response(sock: socket.socket | ssl.SSLSocket) -> bytes:
    """One HTTP/1.1 response with Content-Length (what aiohttp's json_response sends)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed while reading a response"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return head


def closed_by_peer(sock: socket.socket | ssl.SSLSocket, timeout: float = WAIT) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, ssl.SSLError, ssl.SSLEOFError):
        return True
    except TimeoutError:
        return False


def keepalive_connection(gw: Gateway, upstream: Upstream, token: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.proxy_port), timeout=10)
    request = (f"GET {upstream.http_url}/allowed/{uuid.uuid4()} HTTP/1.1\r\nHost: 127.0.0.1:{upstream.http_port}\r\n"
               f"Proxy-Authorization: Bearer {token}\r\nConnection: keep-alive\r\n\r\n")
    sock.sendall(request.encode())
    assert b" 200 " in read_response(sock).split(b"\r\n")[0]
    return sock


def tunnel(gw: Gateway, upstream: Upstream, token: str) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", gw.proxy_port), timeout=10)
    raw.sendall(f"CONNECT localhost:{upstream.https_port} HTTP/1.1\r\nHost: localhost:{upstream.https_port}\r\n"
                f"Proxy-Authorization: Bearer {token}\r\n\r\n".encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += raw.recv(4096)
    assert b" 200 " in reply.split(b"\r\n")[0], reply
    tls = ssl.create_default_context(cafile=str(gw.ca_file)).wrap_socket(raw, server_hostname="localhost")
    tls.sendall(f"GET /allowed/{uuid.uuid4()} HTTP/1.1\r\nHost: localhost:{upstream.https_port}\r\n\r\n".encode())
    assert b" 200 " in read_response(tls).split(b"\r\n")[0]
    return tls


def test_revocation_closes_a_kept_alive_connection(gw: Gateway, upstream: Upstream) -> None:
    doomed_token, other_token = agent_token(gw), agent_token(gw)
    doomed, other = keepalive_connection(gw, upstream, doomed_token), keepalive_connection(gw, upstream, other_token)
    with doomed, other:
        assert not closed_by_peer(doomed, timeout=0.3)  # idle keep-alive stays open until revoked
        revoke_token(gw, doomed_token)
        assert closed_by_peer(doomed)
        assert not closed_by_peer(other, timeout=0.5)


def test_revocation_closes_an_open_tunnel(gw: Gateway, upstream: Upstream) -> None:
    doomed_token, other_token = agent_token(gw), agent_token(gw)
    doomed, other = tunnel(gw, upstream, doomed_token), tunnel(gw, upstream, other_token)
    with doomed, other:
        revoke_token(gw, doomed_token)
        assert closed_by_peer(doomed)
        other.sendall(f"GET /allowed/{uuid.uuid4()} HTTP/1.1\r\nHost: localhost:{upstream.https_port}\r\n\r\n".encode())
        assert b" 200 " in read_response(other).split(b"\r\n")[0]


def test_idle_tunnel_closes_when_its_token_expires(gw: Gateway, upstream: Upstream) -> None:
    short, long = agent_token(gw, ttl=2), agent_token(gw)
    expiring, lasting = tunnel(gw, upstream, short), tunnel(gw, upstream, long)
    with expiring, lasting:
        assert closed_by_peer(expiring)
        assert not closed_by_peer(lasting, timeout=0.5)


async def test_revocation_closes_a_websocket(gw: Gateway, streams: StreamingUpstream) -> None:
    """wss:// through a CONNECT tunnel, as WebSocket clients behind a proxy do."""
    token = agent_token(gw)
    trust = ssl.create_default_context(cafile=str(gw.ca_file))
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"wss://localhost:{streams.tls_port}/allowed/ws", proxy=gw.proxy_with(token),
                                      ssl=trust) as ws:
            await ws.send_str("hello")
            assert (await ws.receive(timeout=10)).data == "echo hello"
            await asyncio.to_thread(revoke_token, gw, token)
            message = await ws.receive(timeout=WAIT)
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


async def test_revocation_cuts_an_sse_stream(gw: Gateway, streams: StreamingUpstream) -> None:
    token = agent_token(gw)
    timeout = aiohttp.ClientTimeout(total=30, sock_read=WAIT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(f"http://127.0.0.1:{streams.port}/allowed/sse", proxy=gw.proxy_with(token),
                               ) as response:
            assert response.status == 200
            assert (await response.content.readline()).startswith(b"data: 0")
            await asyncio.to_thread(revoke_token, gw, token)
            started = time.monotonic()
            with pytest.raises(aiohttp.ClientPayloadError):
                while time.monotonic() - started < 30:
                    line = await response.content.readline()
                    if not line:
                        raise aiohttp.ClientPayloadError("stream ended")  # a clean EOF counts as cut, too
            # The stream ran for 60 s upstream; it ended long before that.
            assert time.monotonic() - started < 30
