"""OpaTransport: the HTTP/1.1 keep-alive connections that carry policy queries to OPA.

OPA's Data API is one small JSON POST and one small JSON answer per call, on loopback in the
common case. aiohttp's ClientSession did that correctly but spent about 0.4 ms of the proxy's event
loop per query (request building, header multidicts, the connector's bookkeeping, its response
reader), which was a third of the policy stage's cost; this transport writes the request as bytes
and reads the answer with a parser for exactly what an HTTP/1.1 server may send back (a status
line, headers, a Content-Length or chunked body), one request in flight per connection, idle
connections kept in a bounded pool. Measured in bench/ (see docs/benchmarks.md).

Failure is an exception, never a guess: a malformed, oversized, truncated or closed answer raises
:class:`OpaTransportError`, and the caller turns that into ``policy_unavailable``. The caller bounds
every query with its own timeout; a query cancelled mid-answer closes its connection, so a late
answer can never be read as the next query's.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

from .opa_address import unix_socket

MAX_ANSWER = 8 << 20  # a decision document larger than this is not an answer we will parse
_HEX = b"0123456789abcdefABCDEF"


class OpaTransportError(Exception):
    """The exchange failed; ``reused`` says whether it ran on a connection that served an earlier query."""

    def __init__(self, message: str, reused: bool = False, sent: bool = True) -> None:
        super().__init__(message)
        self.reused = reused
        self.sent = sent


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one request at a time, the answer parsed as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.served = 0
        self._waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self._buffer = bytearray()
        self._head: tuple[int, int, int | None, bool, bool] | None = None  # status, body start, length, chunked, keep

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.close()  # nothing was asked: a server talking out of turn is not trusted further
            return
        self._buffer += data
        try:
            answer = self._parse()
        except OpaTransportError as error:
            self.close()
            waiter.set_exception(error)
            return
        if answer is not None:
            self._waiter = None
            self.served += 1
            waiter.set_result(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            started = bool(self._buffer)
            waiter.set_exception(OpaTransportError("policy engine closed the connection", self.served > 0 and not started))

    # -- use ----------------------------------------------------------------------------------------

    def exchange(self, request: bytes) -> asyncio.Future[tuple[int, bytes, bool]]:
        """Send ``request``; the future resolves to (status, body, keep_alive)."""
        assert self.transport is not None and self._waiter is None
        self._buffer.clear()
        self._head = None
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- parsing ------------------------------------------------------------------------------------

    def _parse(self) -> tuple[int, bytes, bool] | None:
        buffer = self._buffer
        if len(buffer) > MAX_ANSWER:
            raise OpaTransportError("policy engine answer is too large")
        if self._head is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return None
            self._head = _read_head(bytes(buffer[:end]), end + 4)
        status, start, length, chunked, keep = self._head
        if length is not None:
            if len(buffer) - start < length:
                return None
            if len(buffer) - start > length:
                raise OpaTransportError("policy engine sent more than it announced")
            return status, bytes(buffer[start:]), keep
        if chunked:
            body = _read_chunked(buffer, start)
            return None if body is None else (status, body, keep)
        raise OpaTransportError("policy engine answer has no length")


def _read_head(head: bytes, body_start: int) -> tuple[int, int, int | None, bool, bool]:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or not parts[1].isdigit() or len(parts[1]) != 3:
        raise OpaTransportError("policy engine sent a malformed status line")
    status = int(parts[1])
    length: int | None = None
    chunked = False
    keep = parts[0] == b"HTTP/1.1"
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise OpaTransportError("policy engine sent a malformed header")
        name, value = name.strip().lower(), value.strip()
        if name == b"content-length":
            if not value.isdigit() or (length is not None and length != int(value)):
                raise OpaTransportError("policy engine sent a bad Content-Length")
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = value.lower() == b"chunked"
            if not chunked:
                raise OpaTransportError("policy engine sent an unsupported Transfer-Encoding")
        elif name == b"connection":
            keep = value.lower() != b"close" if keep else value.lower() == b"keep-alive"
    if chunked:
        length = None  # RFC 9112 6.3: Transfer-Encoding overrides Content-Length
    if length is None and not chunked and status in (204, 304):
        length = 0
    return status, body_start, length, chunked, keep


def _read_chunked(buffer: bytearray, position: int) -> bytes | None:
    """The body if every chunk and the final empty one (and any trailers) are in; None if not yet."""
    body = bytearray()
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size_text = bytes(buffer[position:line_end]).split(b";", 1)[0].strip()
        if not size_text or len(size_text) > 8 or size_text.strip(_HEX):
            raise OpaTransportError("policy engine sent a malformed chunk")
        size = int(size_text, 16)
        if size == 0:
            after = line_end + 2  # trailer fields, if any, then an empty line
            if buffer[after:after + 2] == b"\r\n":
                finished = after + 2
            else:
                found = buffer.find(b"\r\n\r\n", after)
                if found < 0:
                    return None
                finished = found + 4
            if finished != len(buffer):
                raise OpaTransportError("policy engine sent more than one answer")
            return bytes(body)
        start = line_end + 2
        if len(buffer) < start + size + 2:
            return None
        if buffer[start + size:start + size + 2] != b"\r\n":
            raise OpaTransportError("policy engine sent a malformed chunk")
        body += buffer[start:start + size]
        position = start + size + 2


class OpaTransport:
    """POSTs JSON to one OPA (an ``http://`` or ``https://`` base URL, or the ``unix://`` socket of
    the managed OPA, gateway/opa_address.py) over pooled keep-alive connections."""

    def __init__(self, url: str, pool_size: int = 100) -> None:
        self._socket = unix_socket(url)
        parts = urlsplit("http://localhost" if self._socket else url)
        if parts.scheme not in ("http", "https") or not parts.hostname or self._socket == "":
            raise ValueError(f"policy engine URL must be http://, https:// or unix://, got {url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        host_header = parts.netloc.rsplit("@", 1)[-1]
        self._prefix = parts.path.rstrip("/")
        self._head = f" HTTP/1.1\r\nHost: {host_header}\r\nContent-Type: application/json\r\nContent-Length: "
        self._idle: list[_Connection] = []
        self._slots = pool_size
        self._free: asyncio.Semaphore | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """(status, body) of ``POST path`` with a JSON ``body``; raises OpaTransportError or OSError."""
        if self._free is None:
            self._free = asyncio.Semaphore(self._slots)
        request = b"".join((b"POST ", (self._prefix + path).encode(), self._head.encode(),
                            str(len(body)).encode(), b"\r\n\r\n", body))
        async with self._free:
            for _attempt in range(2):
                connection = self._checkout()
                if connection is None:
                    connection = await self._connect()
                try:
                    status, answer, keep = await connection.exchange(request)
                except OpaTransportError as error:
                    connection.close()
                    if error.reused:
                        continue  # the server closed an idle connection as we sent: one fresh try
                    raise
                except BaseException:
                    connection.close()  # cancelled or failed mid-answer: never reuse it
                    raise
                if keep and not connection.closed:
                    self._idle.append(connection)
                else:
                    connection.close()
                return status, answer
        raise OpaTransportError("policy engine closed the connection")

    def _checkout(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self._socket is not None:
            _, connection = await loop.create_unix_connection(_Connection, self._socket)
        else:
            _, connection = await loop.create_connection(_Connection, self._host, self._port, ssl=self._ssl)
        return connection

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
