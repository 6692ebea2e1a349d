"""Upstreams that hang, reset or answer garbage, as real loopback sockets: 504/502 with stable codes, audited."""

from __future__ import annotations

import socket
import struct
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from support import Gateway, Upstream, start_gateway


class BadUpstream:
    """A raw TCP server on 127.0.0.1 that reads one request head and misbehaves according to its path."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(32)
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(65536)
            if not chunk:
                conn.close()
                return
            head += chunk
        path = head.split(b" ", 2)[1].decode()
        self.seen.append(path)
        if "/hang" in path:
            self.held.append(conn)  # accepted, read, never answered
        elif "/slow-body" in path:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: text/plain\r\n\r\n0123456789")
            self.held.append(conn)
        elif "/reset" in path:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
        elif "/garbage" in path:
            conn.sendall(b"\x00\x01 this is not HTTP at all\r\n\r\n")
            conn.close()
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            conn.close()

    def stop(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


@pytest.fixture(scope="module")
def bad_upstream() -> Iterator[BadUpstream]:
    server = BadUpstream()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def impatient(opa_binary: str, tmp_path_factory: pytest.TempPathFactory, acme_policy: Path, upstream_ca_file: Path) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("impatient"), policy_paths=[acme_policy], upstream_ca=upstream_ca_file,
                       extra_config="\n[limits]\nupstream_timeout = 1.0\n")
    gw.create_agent("acme-bot", "acme", ["read", "write"])
    yield gw
    gw.stop()


@pytest.mark.parametrize(("behaviour", "status", "code"), [
    ("hang", 504, "upstream_timeout"),
    ("slow-body", 504, "upstream_timeout"),
    ("reset", 502, "upstream_error"),
    ("garbage", 502, "upstream_error"),
])
def test_a_failing_upstream_gets_a_stable_error_and_an_outcome_record(
    impatient: Gateway, bad_upstream: BadUpstream, behaviour: str, status: int, code: str
) -> None:
    path = f"/allowed/{behaviour}/{uuid.uuid4()}"
    proxy = impatient.proxy_with(impatient.mint("acme-bot"))
    response = requests.get(f"http://127.0.0.1:{bad_upstream.port}{path}", proxies={"http": proxy}, timeout=30)
    assert (response.status_code, response.headers.get("X-Wardgate-Error")) == (status, code)
    assert response.json()["error"]["code"] == code
    assert path in bad_upstream.seen  # it was forwarded once, and failed there
    record = impatient.outcome_for(path)
    assert (record["status"], record["error"]) == (status, code)


def test_the_gateway_keeps_serving_after_failing_upstreams(impatient: Gateway, bad_upstream: BadUpstream, upstream: Upstream) -> None:
    proxy = impatient.proxy_with(impatient.mint("acme-bot"))
    hung = f"/allowed/hang/{uuid.uuid4()}"
    assert requests.get(f"http://127.0.0.1:{bad_upstream.port}{hung}", proxies={"http": proxy}, timeout=30).status_code == 504
    fine = requests.get(f"{upstream.http_url}/allowed/after-{uuid.uuid4()}", proxies={"http": proxy}, timeout=30)
    assert fine.status_code == 200
