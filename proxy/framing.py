"""Request heads checked byte for byte before mitmproxy parses them; request bodies capped as they arrive.

mitmproxy 11 already refuses (``validate_inbound_headers``): Content-Length together with
Transfer-Encoding, several Content-Length or Transfer-Encoding fields, a non-numeric length, an
unknown coding, invalid header names. It lets through, and wardgate refuses here:

- a bare LF as a line end (its reader splits on ``\\n`` and drops a trailing ``\\r``),
- CR, NUL and other control characters inside a field value,
- obsolete line folding (a line starting with SP/HT; mitmproxy joins it into the value with CRLF),
- more than one Host field (two destinations in one request),
- any amount of header bytes (mitmproxy buffers the head without limit) and any number of fields,
- a request body of any size (``body_size_limit`` would also cut responses, so it is not used).

Everything here runs inside mitmproxy's HTTP/1 server layer, before any addon hook: a refused
request produces no flow, opens no upstream connection and is answered with the JSON error
(``request_framing_invalid`` 400, ``request_headers_too_large`` 431, ``request_too_large`` 413) and
the client connection closed. :func:`inspect_head` is a pure function (fuzzed in
``tests/fuzz``). ``install`` swaps three methods, like ``protocol_errors`` swaps one renderer.

The third lets a request whose body is late be answered from outside the layer: Limits' watchdog
(``limits.body_timeout``) injects a :class:`BodyLate` message for the flow through mitmproxy's
``Proxyserver.inject_event``, which routes it to the flow's HTTP stream; a stream still reading that
request's body answers 408 ``request_timeout`` and closes the connection. The body is buffered (never
streamed), and with the lazy connection strategy no upstream connection exists before it is complete,
so the upstream receives nothing.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field

from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.proxy.layers.http._events import ResponseProtocolError
from mitmproxy.proxy.layers.http._hooks import HttpErrorHook

from wardgate.gateway.errors import BadRequest, HeadersTooLarge, PayloadTooLarge, WardgateError, to_response

log = logging.getLogger("wardgate.proxy")

_HEAD_END = re.compile(rb"\n\r?\n")
# Inside one CRLF-delimited line: every C0 control except HT, and DEL.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CONTENT_LENGTH = re.compile(rb"^(?:0|[1-9][0-9]{0,17})$")
BODY_LIMIT_MESSAGE = "request body exceeds wardgate's limits.max_body_bytes"
BODY_TIMEOUT_MESSAGE = "request body did not arrive within wardgate's limits.body_timeout"


class BodyLate:
    """The message of the ``MessageInjected`` event that tells a stream its request body is late."""


def _framing(reason: str) -> BadRequest:
    return BadRequest("the request's framing is ambiguous or malformed", code="request_framing_invalid", reasons=[reason])


def inspect_head(head: bytes, max_bytes: int, max_fields: int) -> WardgateError | None:
    """``head``: the request line and fields up to and including the blank line. None if acceptable."""
    if len(head) > max_bytes:
        return HeadersTooLarge(f"the request head exceeds {max_bytes} bytes", reasons=["header_bytes"])
    if not head.endswith(b"\r\n\r\n"):
        return _framing("bare_lf")
    lines = head[:-4].split(b"\r\n")
    if len(lines) - 1 > max_fields:
        return HeadersTooLarge(f"the request has more than {max_fields} header fields", reasons=["header_count"])
    counts: dict[bytes, list[bytes]] = {}
    for number, line in enumerate(lines):
        if b"\n" in line or b"\r" in line:
            return _framing("bare_line_break")
        if _CONTROL.search(line):
            return _framing("control_character")
        if number == 0:
            continue
        if line[:1] in (b" ", b"\t"):
            return _framing("obs_fold")
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            return _framing("invalid_field")
        counts.setdefault(name.lower(), []).append(value.strip(b" \t"))
    lengths = counts.get(b"content-length", [])
    codings = counts.get(b"transfer-encoding", [])
    if lengths and codings:
        return _framing("content_length_and_transfer_encoding")
    if len(lengths) > 1:
        return _framing("duplicate_content_length")
    if lengths and not _CONTENT_LENGTH.match(lengths[0]):
        return _framing("invalid_content_length")
    if len(codings) > 1:
        return _framing("duplicate_transfer_encoding")
    if codings and codings[0].lower() != b"chunked":
        return _framing("invalid_transfer_encoding")
    if codings and lines[0].endswith(b" HTTP/1.0"):
        return _framing("transfer_encoding_http10")
    if len(counts.get(b"host", [])) > 1:
        return _framing("duplicate_host")
    return None


def render(error: WardgateError) -> bytes:
    rendered = to_response(error)
    headers = http.Headers(**{k.replace("-", "_"): v for k, v in rendered.headers.items()}, Connection="close")
    return http1.assemble_response(http.Response.make(error.status, rendered.body, headers))


@dataclass
class HeadGuard:
    """Limits applied inside mitmproxy's HTTP/1 layer, and when each unfinished request head began."""

    max_header_bytes: int
    max_headers: int
    max_body_bytes: int
    # client connection id → monotonic time the first byte of a still unfinished head arrived
    head_started: dict[str, float] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)  # code → count, for tests and logs

    def _count(self, error: WardgateError) -> None:
        self.refused[error.code] = self.refused.get(error.code, 0) + 1

    def install(self) -> None:
        guard = self
        read_headers = _http1.Http1Server.read_headers
        original_read = getattr(read_headers, "__wrapped__", read_headers)

        def checked_read_headers(layer: _http1.Http1Server, event: events.ConnectionEvent):  # type: ignore[no-untyped-def]
            conn_id = layer.conn.id
            if isinstance(event, events.DataReceived):
                data = bytes(layer.buf)
                stripped = data.lstrip(b"\r\n")
                end = _HEAD_END.search(stripped)
                error = None
                if end is not None:
                    guard.head_started.pop(conn_id, None)
                    error = inspect_head(stripped[: end.end()], guard.max_header_bytes, guard.max_headers)
                elif len(stripped) > guard.max_header_bytes:
                    guard.head_started.pop(conn_id, None)
                    error = HeadersTooLarge(f"the request head exceeds {guard.max_header_bytes} bytes", reasons=["header_bytes"])
                elif stripped:
                    guard.head_started.setdefault(conn_id, time.monotonic())
                if error is not None:
                    guard._count(error)
                    log.info("refused a request head from %s: %s %s", layer.conn.peername, error.code, error.reasons)
                    yield commands.SendData(layer.conn, render(error))
                    yield commands.CloseConnection(layer.conn)
                    layer.state = layer.done
                    return
            elif isinstance(event, events.ConnectionClosed):
                guard.head_started.pop(conn_id, None)
            yield from original_read(layer, event)

        checked_read_headers.__wrapped__ = original_read  # type: ignore[attr-defined]
        _http1.Http1Server.read_headers = checked_read_headers  # type: ignore[method-assign]

        check_body_size = http_layer.HttpStream.check_body_size
        original_check = getattr(check_body_size, "__wrapped__", check_body_size)

        def capped_check_body_size(stream: http_layer.HttpStream, request: bool):  # type: ignore[no-untyped-def]
            if request:
                if stream.request_body_buf:
                    size: int | None = len(stream.request_body_buf)
                else:
                    try:
                        size = http1.expected_http_body_size(stream.flow.request, None)
                    except ValueError:
                        size = None
                if size is not None and size > guard.max_body_bytes:
                    guard._count(PayloadTooLarge(""))
                    stream.flow.error = mflow.Error(BODY_LIMIT_MESSAGE)
                    yield HttpErrorHook(stream.flow)
                    yield http_layer.SendHttp(
                        ResponseProtocolError(stream.stream_id, BODY_LIMIT_MESSAGE, 413), stream.context.client
                    )
                    stream.client_state = stream.state_errored
                    stream.flow.live = False
                    return True
            return (yield from original_check(stream, request))

        capped_check_body_size.__wrapped__ = original_check  # type: ignore[attr-defined]
        http_layer.HttpStream.check_body_size = capped_check_body_size  # type: ignore[method-assign]

        handle_event = http_layer.HttpStream._handle_event
        original_handle = getattr(handle_event, "__wrapped__", handle_event)

        def handle_event_or_late_body(stream: http_layer.HttpStream, event: events.Event):  # type: ignore[no-untyped-def]
            if isinstance(event, events.MessageInjected) and isinstance(event.message, BodyLate):
                # Only the request this watchdog entry was for, and only while its body is still arriving.
                if event.flow is getattr(stream, "flow", None) and stream.client_state == stream.state_consume_request_body:
                    log.info("request body from %s did not arrive in time", stream.context.client.peername)
                    yield from stream.handle_protocol_error(
                        ResponseProtocolError(stream.stream_id, BODY_TIMEOUT_MESSAGE, 408)
                    )
                    stream.client_state = stream.state_errored
                return
            yield from original_handle(stream, event)

        handle_event_or_late_body.__wrapped__ = original_handle  # type: ignore[attr-defined]
        http_layer.HttpStream._handle_event = handle_event_or_late_body  # type: ignore[method-assign]
