"""Hostile destinations through a real gateway: refused before anything reaches them."""

from __future__ import annotations

import base64
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from audit_backends import agent_ready
from support import Gateway, OpaServer, Upstream, start_gateway, write_tenant_policy

SPELLINGS = ["127.0.0.1", "2130706433", "0x7f000001", "0177.0.0.1", "127.1", "localhost"]


@pytest.fixture(scope="module")
def strict_gateway(opa_binary: str, tmp_path_factory: pytest.TempPathFactory, upstream_ca_file: Path) -> Iterator[Gateway]:
    """Default egress rules (no internal range allowed); the policy itself allows every spelling."""
    rules = [{"host": host, "methods": ["*"]} for host in SPELLINGS]
    data = write_tenant_policy(tmp_path_factory.mktemp("strict-policy"), "acme", rules)
    gw = start_gateway(tmp_path_factory.mktemp("strict"), policy_paths=[data], upstream_ca=upstream_ca_file, allow_ranges=None)
    gw.create_agent("acme-bot", "acme", ["read"])
    yield gw
    gw.stop()


def proxied_get(gateway: Gateway, url: str, **kw: object) -> requests.Response:
    proxy = gateway.proxy_with(gateway.mint("acme-bot"))
    return requests.get(url, proxies={"http": proxy, "https": proxy}, verify=str(gateway.ca_file), timeout=15, **kw)


# Over HTTPS, Python's TLS client itself reads "0177.0.0.1" as an IP and rejects the interception
# certificate (whose SAN is the name as written) before any request is sent: nothing to refuse there.
CASES = [(s, h) for s in ("http", "https") for h in SPELLINGS if (s, h) != ("https", "0177.0.0.1")]


@pytest.mark.parametrize(("scheme", "host"), CASES)
def test_loopback_in_any_spelling_is_refused_by_default(strict_gateway: Gateway, upstream: Upstream, host: str, scheme: str) -> None:
    port = upstream.http_port if scheme == "http" else upstream.https_port
    path = f"/allowed/{uuid.uuid4()}"
    response = proxied_get(strict_gateway, f"{scheme}://{host}:{port}{path}")
    assert response.status_code == 403
    assert response.headers["X-Wardgate-Error"] == "destination_refused"
    assert response.json()["error"]["reasons"] == ["loopback"]
    assert upstream.count(path) == 0
    (record,) = strict_gateway.records(response.headers["X-Wardgate-Audit-Id"])
    assert (record["kind"], record["error"]) == ("refusal", "destination_refused")


def test_names_the_policy_denies_are_never_resolved(strict_gateway: Gateway) -> None:
    """Policy first: a denied name is answered without a DNS lookup (which could leak data)."""
    response = proxied_get(strict_gateway, "http://exfiltrate-secret.no-such-zone.invalid/")
    assert response.json()["error"]["code"] == "policy_denied"


@pytest.mark.parametrize("which", ["admin", "proxy"])
def test_own_listeners_are_unreachable_even_with_loopback_allowed(gateway: Gateway, which: str) -> None:
    response = proxied_get(gateway, f"http://{gateway.listeners[which]}/allowed/healthz")
    assert response.status_code == 403
    assert response.json()["error"]["reasons"] == ["own_listener"]


def test_an_external_opa_is_unreachable_through_the_proxy(gateway_on_external_opa: Gateway,
                                                           external_opa: OpaServer, upstream: Upstream) -> None:
    """The managed OPA has no TCP port (tests/gateway/test_opa_socket.py); an external one has, and
    it is guarded like the gateway's own listeners."""
    agent_ready(gateway_on_external_opa, upstream.http_url, "acme-bot")
    response = proxied_get(gateway_on_external_opa, f"{external_opa.url}/allowed/health")
    assert response.status_code == 403
    assert response.json()["error"]["reasons"] == ["own_listener"]


def raw_exchange(gateway: Gateway, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", gateway.proxy_port), timeout=10) as sock:
        sock.sendall(payload)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b"content-length" in b"".join(chunks).lower():
                head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
                if len(body) >= length:
                    break
        return b"".join(chunks)


def auth_header(gateway: Gateway) -> bytes:
    token = gateway.mint("acme-bot")
    return b"Proxy-Authorization: Basic " + base64.b64encode(f"agent:{token}".encode()) + b"\r\n"


def test_host_header_must_match_the_request_target(gateway: Gateway, upstream: Upstream) -> None:
    path = f"/allowed/{uuid.uuid4()}"
    request = (f"GET http://127.0.0.1:{upstream.http_port}{path} HTTP/1.1\r\nHost: evil.example\r\n".encode()
               + auth_header(gateway) + b"\r\n")
    answer = raw_exchange(gateway, request)
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"destination_mismatch" in answer
    assert upstream.count(path) == 0


def test_requests_in_a_tunnel_must_match_the_connect_target(gateway: Gateway, upstream: Upstream) -> None:
    path = f"/allowed/{uuid.uuid4()}"
    with socket.create_connection(("127.0.0.1", gateway.proxy_port), timeout=10) as sock:
        sock.sendall(f"CONNECT localhost:{upstream.https_port} HTTP/1.1\r\nHost: localhost:{upstream.https_port}\r\n".encode()
                     + auth_header(gateway) + b"\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        context = ssl.create_default_context(cafile=str(gateway.ca_file))
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            # The tunnel was opened for the HTTPS upstream; this request names the plain one.
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{upstream.http_port}\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"destination_mismatch" in answer
    assert upstream.count(path) == 0


def test_non_http_inside_a_tunnel_is_closed(gateway: Gateway) -> None:
    received: list[bytes] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(5)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(3)
            try:
                while data := conn.recv(1024):
                    received.append(data)
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    with socket.create_connection(("127.0.0.1", gateway.proxy_port), timeout=10) as sock:
        sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode() + auth_header(gateway) + b"\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.sendall(b"SSH-2.0-OpenSSH_9.0\r\n")
        try:
            closed = sock.recv(1024) == b""
        except ConnectionResetError:
            closed = True
    assert closed
    listener.close()
    thread.join(5)
    assert b"".join(received) == b""


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_keep_alive_reuses_the_pinned_upstream_connection(gateway: Gateway, upstream: Upstream, scheme: str) -> None:
    """One client connection, twelve requests: all answered, over a single upstream connection
    (the pinned address must not defeat mitmproxy's reuse, which once stalled the sixth request)."""
    # By name: the pinned IP differs from the name mitmproxy matches reusable connections by.
    base = f"{scheme}://localhost:{upstream.http_port if scheme == 'http' else upstream.https_port}"
    proxy = gateway.proxy_with(gateway.mint("acme-bot"))
    prefix = f"/allowed/keepalive/{uuid.uuid4()}"
    with requests.Session() as session:
        for i in range(12):
            response = session.get(f"{base}{prefix}/{i}", proxies={"http": proxy, "https": proxy},
                                   verify=str(gateway.ca_file), timeout=10)
            assert response.status_code == 200
    ports = {r.peer_port for r in upstream.seen if r.path.startswith(prefix)}
    assert upstream.count(prefix) == 12 and len(ports) == 1
