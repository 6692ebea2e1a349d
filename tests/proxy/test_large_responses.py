"""Large response bodies on a real gateway are relayed as they arrive, not held whole.

The upstream sends most of a body, then waits until the agent has received that much: a gateway
that buffered the body would give the agent nothing until the upstream gave up waiting. Announced
lengths and unknown ones (chunked, or ended by closing the connection), plain HTTP and inside an
intercepted CONNECT tunnel. A relayed body may take longer than ``limits.upstream_timeout`` as long
as bytes keep coming, and is cut when they stop for that long; the outcome record counts the bytes
that went out."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import trustme
from aiohttp import web
from mitmproxy.net.http import http1
from mitmproxy.test import tflow

from support import Gateway, LoopbackServer, server_tls, start_gateway
from wardgate.proxy.large_responses import announced_size

THRESHOLD = 64 * 1024
UPSTREAM_TIMEOUT = 1.5
LIMITS = (f"\n[limits]\nresponse_buffer_bytes = {THRESHOLD}\nupstream_timeout = {UPSTREAM_TIMEOUT}\nidle_timeout = 60\n"
          f"\n[mcp]\nmax_body_bytes = {THRESHOLD}\n")
HEAD = 4 * THRESHOLD  # sent before the upstream waits for the agent
TAIL = 16 * 1024
PIECE = 16 * 1024
PATIENCE = 8.0  # how long the upstream waits for the agent before sending the rest anyway


class HoldingUpstream:
    """Bodies of HEAD + TAIL bytes whose tail waits for ``release(key)``; steady and stalling bodies."""

    def __init__(self, ca: trustme.CA) -> None:
        self._ca = ca
        self.releases: dict[str, threading.Event] = {}
        self.tail_sent_because: dict[str, str] = {}
        self.ports: list[int] = []
        self._server: LoopbackServer | None = None

    def release(self, key: str) -> None:
        self.releases.setdefault(key, threading.Event()).set()

    async def _hold(self, request: web.Request) -> web.StreamResponse:
        key, framing = request.match_info["key"], request.match_info["framing"]
        released = self.releases.setdefault(key, threading.Event())
        body = bytes(range(256)) * ((HEAD + TAIL) // 256)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if framing == "length":
            response.content_length = len(body)
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, HEAD, PIECE):
            await response.write(body[start:start + PIECE])
        deadline = time.monotonic() + PATIENCE
        while not released.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.tail_sent_because[key] = "released" if released.is_set() else "gave up"
        await response.write(body[HEAD:])
        await response.write_eof()
        return response

    async def _drip(self, request: web.Request) -> web.StreamResponse:
        """``pieces`` writes ``gap`` seconds apart, their length announced or not (chunked)."""
        pieces, gap = int(request.query["pieces"]), float(request.query["gap"])
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if request.match_info["framing"] == "length":
            response.content_length = pieces * 2 * THRESHOLD
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        for index in range(pieces):
            if index:
                await asyncio.sleep(gap)
            await response.write(b"d" * (2 * THRESHOLD))
        await response.write_eof()
        return response

    def start(self) -> None:
        def build() -> web.Application:
            app = web.Application()
            app.router.add_get("/allowed/hold/{framing}/{key}", self._hold)
            app.router.add_post("/allowed/hold/{framing}/{key}", self._hold)  # an MCP server's answer
            app.router.add_get("/allowed/drip/{framing}/{key}", self._drip)
            return app

        self._server = LoopbackServer(build, [None, server_tls(self._ca)])
        self.ports = self._server.start()

    def url(self, scheme: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[0]}{path}" if scheme == "http" else f"https://localhost:{self.ports[1]}{path}"

    def stop(self) -> None:
        if self._server:
            self._server.stop()


class ClosingUpstream:
    """HTTP/1.1 bodies with neither length nor chunks, ended by closing the connection; the tail
    waits for ``release(key)`` like HoldingUpstream's."""

    def __init__(self, holding: HoldingUpstream) -> None:
        self._holding = holding
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(PATIENCE + 5)
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            key = head.split(b" ")[1].decode().rsplit("/", 1)[1]
            released = self._holding.releases.setdefault(key, threading.Event())
            body = bytes(range(256)) * ((HEAD + TAIL) // 256)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")
            conn.sendall(body[:HEAD])
            self._holding.tail_sent_because[key] = "released" if released.wait(PATIENCE) else "gave up"
            conn.sendall(body[HEAD:])

    def close(self) -> None:
        self._listener.close()


@pytest.fixture(scope="module")
def holding(test_ca: trustme.CA) -> Iterator[HoldingUpstream]:
    server = HoldingUpstream(test_ca)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def relaying(opa_binary: str, tmp_path_factory: pytest.TempPathFactory, acme_policy: Path, upstream_ca_file: Path) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("large-responses"), policy_paths=[acme_policy], upstream_ca=upstream_ca_file,
                       extra_config=LIMITS)
    gw.create_agent("acme-bot", "acme", ["read", "write"])
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def closing(holding: HoldingUpstream) -> Iterator[ClosingUpstream]:
    server = ClosingUpstream(holding)
    yield server
    server.close()


def session(gateway: Gateway) -> requests.Session:
    proxy = gateway.proxy_with(gateway.mint("acme-bot", scopes=["read", "write"]))
    client = requests.Session()
    client.trust_env = False
    client.proxies = {"http": proxy, "https": proxy}
    client.verify = str(gateway.ca_file)
    return client


@pytest.mark.parametrize(("scheme", "framing"), [("http", "length"), ("http", "chunked"), ("http", "close"),
                                                 ("https", "length"), ("https", "chunked")])
def test_a_large_body_reaches_the_agent_while_the_upstream_still_sends_it(
    relaying: Gateway, holding: HoldingUpstream, closing: ClosingUpstream, scheme: str, framing: str
) -> None:
    key = str(uuid.uuid4())
    path = f"/allowed/hold/{framing}/{key}"
    url = f"http://127.0.0.1:{closing.port}{path}" if framing == "close" else holding.url(scheme, path)
    received = bytearray()
    with session(relaying) as client, client.get(url, stream=True, timeout=PATIENCE + 5) as response:
        assert response.status_code == 200
        for piece in response.iter_content(PIECE):
            received += piece
            if len(received) >= HEAD:
                holding.release(key)  # the agent has the head: only now may the upstream finish
    assert holding.tail_sent_because[key] == "released"
    assert bytes(received) == bytes(range(256)) * ((HEAD + TAIL) // 256)
    outcome = relaying.outcome_for(path)
    assert (outcome["status"], outcome["bytes_out"], outcome["error"]) == (200, HEAD + TAIL, None)


MCP_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2025-11-25"}


@pytest.mark.parametrize("method", ["tools/call", "tools/list"])
def test_a_large_mcp_answer_is_relayed_too(relaying: Gateway, holding: HoldingUpstream, method: str) -> None:
    """An MCP answer is relayed past the threshold like any other; a tools/list answer, which the
    gateway filters whole, past [mcp] max_body_bytes (then unfiltered, as one that does not parse)."""
    key = str(uuid.uuid4())
    path = f"/allowed/hold/chunked/{key}"
    message = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {"name": "search"} if method == "tools/call" else {}}
    received = 0
    with session(relaying) as client, client.post(holding.url("http", path), data=json.dumps(message), headers=MCP_HEADERS,
                                                  stream=True, timeout=PATIENCE + 5) as response:
        assert response.status_code == 200 and "X-Wardgate-Error" not in response.headers
        for piece in response.iter_content(PIECE):
            received += len(piece)
            if received >= HEAD:
                holding.release(key)
    assert holding.tail_sent_because[key] == "released"
    assert received == HEAD + TAIL
    outcome = relaying.outcome_for(path)
    assert (outcome["mcp_method"], outcome["bytes_out"]) == (method, HEAD + TAIL)  # judged as an MCP call


def test_a_relayed_body_may_outlast_upstream_timeout_while_bytes_keep_coming(relaying: Gateway, holding: HoldingUpstream) -> None:
    pieces, gap = 5, UPSTREAM_TIMEOUT / 2  # 3 s in all, never UPSTREAM_TIMEOUT without a byte
    path = f"/allowed/drip/chunked/{uuid.uuid4()}"
    started = time.monotonic()
    with session(relaying) as client:
        response = client.get(holding.url("http", path) + f"?pieces={pieces}&gap={gap}", timeout=20)
    assert response.status_code == 200 and len(response.content) == pieces * 2 * THRESHOLD
    assert time.monotonic() - started > UPSTREAM_TIMEOUT  # so a bound on the whole transfer would have cut it
    outcome = relaying.outcome_for(path.split("?")[0])
    assert (outcome["status"], outcome["bytes_out"], outcome["error"]) == (200, pieces * 2 * THRESHOLD, None)


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_relayed_body_that_stalls_for_upstream_timeout_is_cut(relaying: Gateway, holding: HoldingUpstream, framing: str) -> None:
    path = f"/allowed/drip/{framing}/{uuid.uuid4()}"
    received = 0
    with session(relaying) as client, client.get(holding.url("http", path) + "?pieces=2&gap=6", stream=True, timeout=20) as response:
        assert response.status_code == 200
        with pytest.raises(requests.exceptions.ChunkedEncodingError):  # requests' name for a body cut short
            for piece in response.iter_content(PIECE):
                received += len(piece)
    assert received == 2 * THRESHOLD  # the first piece went out; the second never came
    outcome = relaying.outcome_for(path)
    assert outcome["error"] == "upstream_timeout"


HEADS = [[(b"content-length", b"139")], [(b"Content-Length", b"2000000")], [(b"transfer-encoding", b"chunked")], [],
         [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")], [(b"content-length", b"7"), (b"Content-Length", b"7")],
         [(b"content-length", b"+7")], [(b"content-length", b"")]]


@pytest.mark.parametrize("method", ["GET", "HEAD", "CONNECT"])
@pytest.mark.parametrize("status", [101, 200, 204, 304, 404])
@pytest.mark.parametrize("fields", HEADS)
def test_the_announced_size_is_mitmproxys_reading_of_the_head(method: str, status: int, fields: list[tuple[bytes, bytes]]) -> None:
    """announced_size reads the common head itself (mitmproxy's header lookups cost 8 µs a call):
    it must answer what mitmproxy's own framing rules do, heads it cannot read included."""
    flow = tflow.tflow(resp=True)
    flow.request.method = method
    assert flow.response is not None
    flow.response.status_code = status
    flow.response.headers.fields = tuple(fields)
    try:
        expected = http1.expected_http_body_size(flow.request, flow.response)
    except ValueError:
        expected = None
    assert announced_size(flow) == (None if expected is None or expected < 0 else expected)
