"""OpaTransport against a real loopback server that answers exactly the bytes each case scripts.

The policy client's tests (test_policy_client.py) run it against a real OPA; here the answers are
the ones OPA does not send on a good day: chunked bodies with trailers, answers cut mid-body,
bytes beyond the announced length, closed idle connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from wardgate.gateway.opa_transport import OpaTransport, OpaTransportError

OK = b'{"result":{"allow":true}}'


def content_length(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra) + body


class Scripted:
    """Loopback HTTP server: for the n-th request (over all connections) it writes ``answers[n]``
    (bytes, or a callable given the writer) and counts connections."""

    def __init__(self, answers: list[bytes | Callable[[asyncio.StreamWriter], object]], close_after: bool = False) -> None:
        self.answers = answers
        self.close_after = close_after
        self.connections = 0
        self.requests = 0
        self.bodies: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
                self.bodies.append(await reader.readexactly(length))
                answer = self.answers[min(self.requests, len(self.answers) - 1)]
                self.requests += 1
                if callable(answer):
                    await answer(writer)  # type: ignore[misc]
                else:
                    writer.write(answer)
                    await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def exchange(server: Scripted, count: int = 1, pause: float = 0.0) -> list[tuple[int, bytes]]:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    transport = OpaTransport(f"http://127.0.0.1:{port}")
    try:
        answers = []
        for _ in range(count):
            answers.append(await asyncio.wait_for(transport.post("/v1/data/x", b'{"input":{}}'), 5))
            await asyncio.sleep(pause)
        return answers
    finally:
        await transport.close()
        listener.close()


def run(server: Scripted, count: int = 1, pause: float = 0.0) -> list[tuple[int, bytes]]:
    return asyncio.run(exchange(server, count, pause))


async def byte_by_byte(writer: asyncio.StreamWriter) -> None:
    for value in content_length(OK):
        writer.write(bytes([value]))
        await writer.drain()
        await asyncio.sleep(0)


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n" + OK[:5] + b"\r\n" + \
    b"%x;ext=1\r\n" % (len(OK) - 5) + OK[5:] + b"\r\n0\r\nX-Trailer: t\r\n\r\n"


@pytest.mark.parametrize(
    "answer",
    [content_length(OK), CHUNKED, byte_by_byte, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
     b"%x\r\n" % len(OK) + OK + b"\r\n0\r\n\r\n"],
    ids=["content-length", "chunked-with-trailer", "one-byte-writes", "chunked"],
)
def test_answers_are_read_whole(answer: bytes) -> None:
    server = Scripted([answer])
    assert run(server, count=3) == [(200, OK)] * 3
    assert server.connections == 1  # keep-alive: one connection for the three queries
    assert server.bodies == [b'{"input":{}}'] * 3


def test_connection_close_is_honoured() -> None:
    server = Scripted([content_length(OK, b"Connection: close\r\n")], close_after=True)
    assert run(server, count=2) == [(200, OK)] * 2
    assert server.connections == 2


@pytest.mark.parametrize("pause", [0.0, 0.05], ids=["closing-as-it-sends", "closed-while-idle"])
def test_an_idle_connection_the_server_closed_is_replaced(pause: float) -> None:
    # The server closes after each answer without saying so; the next query finds the old
    # connection closed (or closing as it sends) and goes out on a fresh one.
    server = Scripted([content_length(OK)], close_after=True)
    assert run(server, count=3, pause=pause) == [(200, OK)] * 3
    assert server.connections == 3


def test_status_is_passed_through() -> None:
    server = Scripted([b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\n{}"])
    assert run(server) == [(500, b"{}")]


async def cut_mid_body(writer: asyncio.StreamWriter) -> None:
    writer.write(content_length(OK)[:-5])
    await writer.drain()
    writer.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + OK,  # no length at all
        b"HTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nbroken header\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}EXTRA",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n",
        cut_mid_body,
    ],
    ids=["no-length", "bad-version", "bad-status", "bad-length", "two-lengths", "header-without-colon",
         "unknown-transfer-encoding", "more-than-announced", "bad-chunk-size", "chunk-overrun", "cut-mid-body"],
)
def test_anything_else_is_an_error(answer: bytes | Callable[[asyncio.StreamWriter], object]) -> None:
    with pytest.raises(OpaTransportError):
        run(Scripted([answer]))


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:1", "http://", "unix://", "127.0.0.1:8181"])
def test_only_http_or_unix_urls(url: str) -> None:
    with pytest.raises(ValueError):
        OpaTransport(url)


def test_a_unix_socket_carries_the_queries(tmp_path: Path) -> None:
    """The managed OPA's way in (gateway/opa_address.py): the same exchange over a Unix socket, the
    connection kept for the next query."""
    server = Scripted([content_length(OK)])

    async def over_unix() -> list[tuple[int, bytes]]:
        path = str(tmp_path / "opa.sock")
        listener = await asyncio.start_unix_server(server.handle, path)
        transport = OpaTransport(f"unix://{path}")
        try:
            return [await asyncio.wait_for(transport.post("/v1/data/x", b'{"input":{}}'), 5) for _ in range(2)]
        finally:
            await transport.close()
            listener.close()

    assert asyncio.run(over_unix()) == [(200, OK), (200, OK)]
    assert server.connections == 1 and server.bodies == [b'{"input":{}}'] * 2
