"""limits.body_timeout on a real gateway: a request body that trickles in past the deadline gets 408
request_timeout and the connection closed, over plain HTTP and inside an intercepted CONNECT tunnel,
audited, with nothing sent upstream; a slow body that ends within the deadline still goes through."""

from __future__ import annotations

import base64
import inspect
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy.layers import http as http_layer

from support import Gateway, Upstream, read_until_closed, start_gateway

BODY_TIMEOUT = 1.0
# Every other time limit is far away, so only the body deadline can answer within the client's patience.
LIMITS = f"\n[limits]\nbody_timeout = {BODY_TIMEOUT}\nheader_timeout = 30\nidle_timeout = 60\nupstream_timeout = 30\n"
PATIENCE = 6.0


@pytest.fixture(scope="module")
def strict(opa_binary: str, tmp_path_factory: pytest.TempPathFactory, acme_policy: Path, upstream_ca_file: Path) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("body-timeout"), policy_paths=[acme_policy], upstream_ca=upstream_ca_file,
                       extra_config=LIMITS)
    gw.create_agent("acme-bot", "acme", ["read", "write"])
    yield gw
    gw.stop()


def proxy_auth(gateway: Gateway) -> str:
    token = gateway.mint("acme-bot", scopes=["read", "write"])
    return "Proxy-Authorization: Basic " + base64.b64encode(f"agent:{token}".encode()).decode() + "\r\n"


def trickle(sock: socket.socket | ssl.SSLSocket, pieces: list[bytes], gap: float) -> threading.Thread:
    """Send ``pieces`` ``gap`` seconds apart from a thread (so the test can read the answer meanwhile);
    stops quietly once the gateway has closed the connection."""

    def run() -> None:
        for piece in pieces:
            time.sleep(gap)
            try:
                sock.sendall(piece)
            except (OSError, ValueError):
                return

    sender = threading.Thread(target=run, daemon=True)
    sender.start()
    return sender


def body_pieces(framing: str, total: int) -> tuple[str, list[bytes]]:
    """The framing header and the body split into one-byte pieces (chunked: one chunk per byte, then the end)."""
    if framing == "content-length":
        return f"Content-Length: {total}\r\n", [b"x"] * total
    return "Transfer-Encoding: chunked\r\n", [b"1\r\nx\r\n"] * total + [b"0\r\n\r\n"]


def outcome_for(gateway: Gateway, path: str) -> list[tuple[str, object, object]]:
    """(kind, status, error) of the records of the call to ``path``, once more than its intent is there."""
    records = gateway.records_for(path, lambda found: any(record["kind"] != "intent" for record in found))
    return [(record["kind"], record["status"], record["error"]) for record in records]


def assert_408(answer: bytes, closed: bool, elapsed: float) -> None:
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"X-Wardgate-Error: request_timeout" in answer and b'"code":"request_timeout"' in answer
    assert closed
    assert BODY_TIMEOUT <= elapsed < BODY_TIMEOUT + 2.5


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_trickling_past_the_deadline_gets_408_and_is_not_sent(strict: Gateway, upstream: Upstream, framing: str) -> None:
    path = f"/allowed/trickle/{framing}/{uuid.uuid4()}"
    header, pieces = body_pieces(framing, 40)  # one byte every 0.1 s: 4 s, never idle, never done in time
    host = f"127.0.0.1:{upstream.http_port}"
    head = f"POST http://{host}{path} HTTP/1.1\r\nHost: {host}\r\n{proxy_auth(strict)}{header}\r\n"
    with socket.create_connection(("127.0.0.1", strict.proxy_port), timeout=PATIENCE) as sock:
        sock.sendall(head.encode())
        started = time.monotonic()
        trickle(sock, pieces, 0.1)
        answer, closed = read_until_closed(sock)
        elapsed = time.monotonic() - started
    assert_408(answer, closed, elapsed)
    assert upstream.count(path) == 0
    assert outcome_for(strict, path) == [("intent", None, None), ("outcome", 408, "request_timeout")]


def test_a_body_that_stops_inside_a_tunnel_gets_408_and_is_not_sent(strict: Gateway, upstream: Upstream) -> None:
    path = f"/allowed/stalled/{uuid.uuid4()}"
    authority = f"localhost:{upstream.https_port}"
    raw = socket.create_connection(("127.0.0.1", strict.proxy_port), timeout=PATIENCE)
    try:
        raw.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{proxy_auth(strict)}\r\n".encode())
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        context = ssl.create_default_context(cafile=str(strict.ca_file))
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(f"POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 100\r\n\r\n".encode() + b"x" * 10)
            started = time.monotonic()  # 10 of 100 bytes, then nothing
            answer, closed = read_until_closed(tls)
            elapsed = time.monotonic() - started
    finally:
        raw.close()
    assert_408(answer, closed, elapsed)
    assert upstream.count(path) == 0
    assert outcome_for(strict, path) == [("intent", None, None), ("outcome", 408, "request_timeout")]


def test_an_unauthenticated_request_cannot_hold_the_connection_with_its_body(strict: Gateway, upstream: Upstream) -> None:
    path = f"/allowed/anonymous/{uuid.uuid4()}"
    host = f"127.0.0.1:{upstream.http_port}"
    with socket.create_connection(("127.0.0.1", strict.proxy_port), timeout=PATIENCE) as sock:
        sock.sendall(f"POST http://{host}{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100\r\n\r\nxx".encode())
        started = time.monotonic()
        answer, closed = read_until_closed(sock)
        elapsed = time.monotonic() - started
    assert_408(answer, closed, elapsed)
    assert upstream.count(path) == 0


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_slow_body_that_ends_in_time_goes_through_whole(strict: Gateway, upstream: Upstream, framing: str) -> None:
    path = f"/allowed/slow-but-in-time/{framing}/{uuid.uuid4()}"
    header, pieces = body_pieces(framing, 5)  # 0.1 s apart: done in about half the deadline
    host = f"127.0.0.1:{upstream.http_port}"
    head = f"POST http://{host}{path} HTTP/1.1\r\nHost: {host}\r\n{proxy_auth(strict)}{header}Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", strict.proxy_port), timeout=PATIENCE) as sock:
        sock.sendall(head.encode())
        trickle(sock, pieces, 0.1).join(PATIENCE)
        answer, closed = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert [r.body for r in upstream.seen if r.path == path] == [b"xxxxx"]


def test_the_mitmproxy_routes_the_late_body_message_relies_on_are_unchanged() -> None:
    """Limits injects ``MessageInjected(flow, BodyLate())`` through ``Proxyserver.inject_event``; mitmproxy's
    HttpLayer must still hand such an event to the flow's stream, and the stream must still read a body in
    ``state_consume_request_body`` (proxy/framing.py wraps ``HttpStream._handle_event`` to answer it)."""
    assert callable(getattr(Proxyserver, "inject_event", None))
    routing = inspect.getsource(http_layer.HttpLayer._handle_event)
    assert "events.MessageInjected" in routing and "self.event_to_child(self.streams[stream_id], event)" in routing
    assert "self.client_state = self.state_consume_request_body" in inspect.getsource(http_layer.HttpStream)
