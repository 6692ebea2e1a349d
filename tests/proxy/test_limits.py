"""[limits] on a real gateway with small numbers: 431, 413 (before the body is sent), slow and idle clients closed, 429."""

from __future__ import annotations

import base64
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from support import Gateway, Upstream, read_until_closed, start_gateway

LIMITS = """
[limits]
max_header_bytes = 2048
max_headers = 20
max_body_bytes = 4096
header_timeout = 1.0
idle_timeout = 2.0
max_tunnels_per_agent = 2
requests_per_second = 0.2
burst = 3
"""
AGENTS = ["size-bot", "body-bot", "slow-bot", "tunnel-bot", "rate-bot", "idle-bot"]


@pytest.fixture(scope="module")
def small(opa_binary: str, tmp_path_factory: pytest.TempPathFactory, acme_policy: Path, upstream_ca_file: Path) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("limits"), policy_paths=[acme_policy], upstream_ca=upstream_ca_file, extra_config=LIMITS)
    for agent in AGENTS:
        gw.create_agent(agent, "acme", ["read", "write"])
    yield gw
    gw.stop()


def auth_line(gateway: Gateway, agent: str) -> str:
    token = gateway.mint(agent, scopes=["read", "write"])
    return "Proxy-Authorization: Basic " + base64.b64encode(f"agent:{token}".encode()).decode() + "\r\n"


def head_for(upstream: Upstream, path: str, auth: str, extra: str = "", method: str = "GET") -> str:
    host = f"127.0.0.1:{upstream.http_port}"
    return f"{method} http://{host}{path} HTTP/1.1\r\nHost: {host}\r\n{auth}{extra}"


@pytest.mark.parametrize(("case", "reason"), [("one_big_field", "header_bytes"), ("many_fields", "header_count"),
                                              ("never_ending_head", "header_bytes")])
def test_oversized_heads_get_431_and_are_not_forwarded(small: Gateway, upstream: Upstream, case: str, reason: str) -> None:
    path = f"/allowed/{case}/{uuid.uuid4()}"
    head = head_for(upstream, path, auth_line(small, "size-bot"))
    if case == "one_big_field":
        payload = head + "X-Big: " + "a" * 3000 + "\r\n\r\n"
    elif case == "many_fields":
        payload = head + "".join(f"X-F{i}: {i}\r\n" for i in range(25)) + "\r\n"
    else:  # no blank line ever: refused as soon as the limit is passed, not when the head ends
        payload = head + "X-Big: " + "a" * 3000
    with socket.create_connection(("127.0.0.1", small.proxy_port), timeout=10) as sock:
        sock.sendall(payload.encode())
        answer, closed = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"X-Wardgate-Error: request_headers_too_large" in answer and f'["{reason}"]'.encode() in answer
    assert closed and upstream.count(path) == 0


def test_a_declared_body_over_the_limit_gets_413_before_it_is_sent(small: Gateway, upstream: Upstream) -> None:
    path = f"/allowed/declared/{uuid.uuid4()}"
    head = head_for(upstream, path, auth_line(small, "body-bot"), "Content-Length: 100000000\r\n\r\n", "POST")
    with socket.create_connection(("127.0.0.1", small.proxy_port), timeout=10) as sock:
        sock.sendall(head.encode())  # not one byte of the 100 MB body
        answer, closed = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"X-Wardgate-Error: request_too_large" in answer
    assert closed and upstream.count(path) == 0
    refusals = [r for r in small.records(wait_for=1) if r["error"] == "request_too_large" and r["path"] == path]
    assert refusals and refusals[0]["kind"] == "refusal" and refusals[0]["status"] == 413


def test_a_chunked_body_is_cut_off_at_the_limit(small: Gateway, upstream: Upstream) -> None:
    path = f"/allowed/chunked/{uuid.uuid4()}"
    head = head_for(upstream, path, auth_line(small, "body-bot"), "Transfer-Encoding: chunked\r\n\r\n", "POST")
    chunk = b"400\r\n" + b"x" * 0x400 + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", small.proxy_port), timeout=10) as sock:
        sock.sendall(head.encode())
        try:
            for _ in range(64):  # never the final 0-chunk: the answer must come while the body is still open
                sock.sendall(chunk)
                sent += 0x400
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer, closed = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert closed and upstream.count(path) == 0
    # Judged on its head (intent recorded), never sent: the outcome says why, not "upstream error".
    deadline = time.monotonic() + 10
    while not (records := [r for r in small.records() if r["path"] == path and r["kind"] == "outcome"]):
        assert time.monotonic() < deadline, "no outcome record"
        time.sleep(0.05)
    assert [(r["status"], r["error"]) for r in records] == [(413, "request_too_large")]


def test_a_body_within_the_limit_goes_through(small: Gateway, upstream: Upstream) -> None:
    path = f"/allowed/fits/{uuid.uuid4()}"
    proxy = small.proxy_with(small.mint("body-bot", scopes=["read", "write"]))
    response = requests.post(f"{upstream.http_url}{path}", data=b"y" * 4000, proxies={"http": proxy}, timeout=10)
    assert response.status_code == 200 and upstream.count(path) == 1


@pytest.mark.parametrize("stage", ["nothing_after_connect_line", "half_a_head"])
def test_a_head_that_takes_too_long_is_closed(small: Gateway, upstream: Upstream, stage: str) -> None:
    path = f"/allowed/slow/{uuid.uuid4()}"
    head = head_for(upstream, path, "")
    partial = head.split("\r\n", 1)[0] if stage == "nothing_after_connect_line" else head
    with socket.create_connection(("127.0.0.1", small.proxy_port), timeout=10) as sock:
        sock.sendall(partial.encode())
        answer, closed = read_until_closed(sock)
    assert closed and answer == b""
    assert upstream.count(path) == 0


def test_an_idle_tunnel_is_closed(small: Gateway, upstream: Upstream) -> None:
    with socket.create_connection(("127.0.0.1", small.proxy_port), timeout=10) as sock:
        sock.sendall(f"CONNECT localhost:{upstream.https_port} HTTP/1.1\r\nHost: localhost:{upstream.https_port}\r\n"
                     f"{auth_line(small, 'idle-bot')}\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        answer, closed = read_until_closed(sock)  # no TLS handshake, no request: idle
    assert closed and answer == b""


def open_tunnel(gateway: Gateway, upstream: Upstream, agent: str) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", gateway.proxy_port), timeout=10)
    sock.sendall(f"CONNECT localhost:{upstream.https_port} HTTP/1.1\r\nHost: localhost:{upstream.https_port}\r\n"
                 f"{auth_line(gateway, agent)}\r\n".encode())
    return sock, sock.recv(4096)


def test_tunnels_per_agent_are_capped_with_retry_after(small: Gateway, upstream: Upstream) -> None:
    first, answer1 = open_tunnel(small, upstream, "tunnel-bot")
    second, answer2 = open_tunnel(small, upstream, "tunnel-bot")
    third, answer3 = open_tunnel(small, upstream, "tunnel-bot")
    try:
        assert answer1.startswith(b"HTTP/1.1 200") and answer2.startswith(b"HTTP/1.1 200")
        assert answer3.startswith(b"HTTP/1.1 429 "), answer3[:200]
        assert b"X-Wardgate-Error: too_many_tunnels" in answer3 and b"Retry-After: 1" in answer3
        other, other_answer = open_tunnel(small, upstream, "idle-bot")  # another agent is not affected
        other.close()
        assert other_answer.startswith(b"HTTP/1.1 200")
        first.close()
        deadline = time.monotonic() + 5
        while True:  # the slot is released when the gateway sees the close
            again, answer4 = open_tunnel(small, upstream, "tunnel-bot")
            again.close()
            if answer4.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert answer4.startswith(b"HTTP/1.1 200")
    finally:
        for sock in (first, second, third):
            sock.close()


def test_requests_per_agent_are_rate_limited_with_retry_after(small: Gateway, upstream: Upstream) -> None:
    proxy = small.proxy_with(small.mint("rate-bot", scopes=["read", "write"]))
    path = f"/allowed/rate/{uuid.uuid4()}"
    answers = [requests.get(f"{upstream.http_url}{path}", proxies={"http": proxy}, timeout=10) for _ in range(5)]
    statuses = [a.status_code for a in answers]
    assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:]
    limited = next(a for a in answers if a.status_code == 429)
    assert limited.headers["X-Wardgate-Error"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert upstream.count(path) == statuses.count(200)
    (record,) = small.records(limited.headers["X-Wardgate-Audit-Id"])
    assert (record["kind"], record["agent"], record["error"]) == ("refusal", "rate-bot", "rate_limited")


def test_the_limits_watchdog_runs_clean(small: Gateway) -> None:
    """The sweep that closes slow heads and idle tunnels runs every 0.25 s; a failing one logs each time."""
    time.sleep(1.0)
    assert "limits watchdog failed" not in small.log.read_text()
