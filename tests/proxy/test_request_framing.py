"""Ambiguous or malformed request framing, sent byte for byte to a real gateway: 400, closed, nothing forwarded.

The first rows are what mitmproxy 11.0.2 refuses on its own (validate_inbound_headers); the rest
it lets through and ``proxy/framing.py`` refuses. Each row carries a unique path, and the loopback
upstream must never see it — nor the request smuggled behind it.
"""

from __future__ import annotations

import base64
import socket
import uuid

import pytest

from support import Gateway, Upstream, read_until_closed

# (name, head template, body, expected reason). {target} is the absolute URL, {auth} the Proxy-Authorization line.
ROWS = [
    # mitmproxy refuses these too; the reason says why in wardgate's terms.
    ("cl_and_te", "POST {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
     b"0\r\n\r\n", "content_length_and_transfer_encoding"),
    ("duplicate_cl", "POST {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 3\r\nContent-Length: 40\r\n\r\n",
     b"abc", "duplicate_content_length"),
    ("signed_cl", "POST {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: +3\r\n\r\n", b"abc", "invalid_content_length"),
    ("cl_list", "POST {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 3, 3\r\n\r\n", b"abc", "invalid_content_length"),
    ("duplicate_te", "POST {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
     b"0\r\n\r\n", "duplicate_transfer_encoding"),
    ("unknown_te", "POST {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Transfer-Encoding: xchunked\r\n\r\n", b"0\r\n\r\n",
     "invalid_transfer_encoding"),
    ("te_http10", "POST {target} HTTP/1.0\r\nHost: {host}\r\n{auth}Transfer-Encoding: chunked\r\n\r\n", b"0\r\n\r\n",
     "transfer_encoding_http10"),
    # mitmproxy 11.0.2 lets these through; wardgate refuses them.
    ("bare_lf_everywhere", "GET {target} HTTP/1.1\nHost: {host}\n{auth_lf}\n", b"", "bare_lf"),
    ("bare_lf_inside", "GET {target} HTTP/1.1\r\nHost: {host}\nX-Smuggle: 1\r\n{auth}\r\n", b"", "bare_line_break"),
    ("cr_in_value", "GET {target} HTTP/1.1\r\nHost: {host}\r\n{auth}X-A: a\rb\r\n\r\n", b"", "bare_line_break"),
    ("nul_in_value", "GET {target} HTTP/1.1\r\nHost: {host}\r\n{auth}X-A: a\x00b\r\n\r\n", b"", "control_character"),
    ("esc_in_value", "GET {target} HTTP/1.1\r\nHost: {host}\r\n{auth}X-A: a\x1bb\r\n\r\n", b"", "control_character"),
    ("obs_fold", "GET {target} HTTP/1.1\r\nHost: {host}\r\n{auth}X-A: a\r\n Transfer-Encoding: chunked\r\n\r\n", b"", "obs_fold"),
    ("duplicate_host", "GET {target} HTTP/1.1\r\nHost: {host}\r\nHost: evil.example\r\n{auth}\r\n", b"", "duplicate_host"),
]


def _auth(gateway: Gateway) -> str:
    token = gateway.mint("acme-bot", scopes=["read", "write"])
    return "Proxy-Authorization: Basic " + base64.b64encode(f"agent:{token}".encode()).decode()


def exchange_until_closed(port: int, payload: bytes, timeout: float = 10) -> tuple[bytes, bool]:
    """Everything the gateway answers, and whether it closed the connection (rather than us timing out)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        return read_until_closed(sock)


@pytest.mark.parametrize(("name", "template", "body", "reason"), ROWS, ids=[row[0] for row in ROWS])
def test_ambiguous_framing_is_refused_and_the_connection_closed(
    gateway: Gateway, upstream: Upstream, name: str, template: str, body: bytes, reason: str
) -> None:
    path = f"/allowed/{name}/{uuid.uuid4()}"
    smuggled = f"/allowed/smuggled/{uuid.uuid4()}"
    host = f"127.0.0.1:{upstream.http_port}"
    auth = _auth(gateway)
    head = template.format(target=f"http://{host}{path}", host=host, auth=auth + "\r\n", auth_lf=auth + "\n")
    # A second request right behind the first: if any hop disagreed about where the first one ends, this is it.
    behind = f"GET http://{host}{smuggled} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n\r\n".encode()
    answer, closed = exchange_until_closed(gateway.proxy_port, head.encode("latin-1") + body + behind)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"X-Wardgate-Error: request_framing_invalid" in answer
    assert f'"reasons":["{reason}"]'.encode() in answer
    assert closed
    assert upstream.count(path) == 0 and upstream.count(smuggled) == 0


def test_the_same_request_well_framed_goes_through(gateway: Gateway, upstream: Upstream) -> None:
    """Control row: without the defect, the raw request reaches the upstream (so the table tests the defect)."""
    path = f"/allowed/control/{uuid.uuid4()}"
    host = f"127.0.0.1:{upstream.http_port}"
    payload = (f"POST http://{host}{path} HTTP/1.1\r\nHost: {host}\r\n{_auth(gateway)}\r\nContent-Length: 3\r\n"
               "X-A: a\tb\r\nConnection: close\r\n\r\nabc").encode()
    answer, closed = exchange_until_closed(gateway.proxy_port, payload)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert upstream.count(path) == 1


def test_http2_is_not_offered_to_agents(gateway: Gateway, upstream: Upstream) -> None:
    """HTTP/2 towards agents is off: an agent offering h2 inside a tunnel gets HTTP/1.1, whose framing is tested above."""
    import ssl

    with socket.create_connection(("127.0.0.1", gateway.proxy_port), timeout=10) as sock:
        sock.sendall(f"CONNECT localhost:{upstream.https_port} HTTP/1.1\r\nHost: localhost:{upstream.https_port}\r\n"
                     f"{_auth(gateway)}\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        context = ssl.create_default_context(cafile=str(gateway.ca_file))
        context.set_alpn_protocols(["h2", "http/1.1"])
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() in (None, "http/1.1")
