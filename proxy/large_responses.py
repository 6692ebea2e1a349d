"""LargeResponses: a response body too large to hold is relayed as it arrives, not buffered whole.

mitmproxy buffers a whole response body before the ``response`` hook unless
``flow.response.stream`` is set: a 200 MB download held 200 MB (and, with its copies, up to 1 GB of
RSS) in the proxy process, reached the agent only once it was all in, and had to arrive within
``limits.upstream_timeout``. Here:

- a body announced (``Content-Length``) larger than the threshold is relayed from its head on;
- a body of unknown length (chunked, or read until the upstream closes) is buffered until more than
  the threshold has arrived, then what was held and the rest are relayed. ``install`` patches
  ``HttpStream.state_consume_response_body`` for that: the switch mitmproxy makes for its own
  ``stream_large_bodies`` option, which cannot be used (it streams request bodies too, which the
  request hooks read whole, and it streams without wardgate's chunk filters). Small bodies of
  unknown length stay buffered, as before.

The threshold is ``limits.response_buffer_bytes`` for a call that carries no credential (this
addon); a call that carries one is decided by StreamScrubber (proxy/scrub.py), with the service's
``inspection_limit`` and its scrubber in the relay, and a ``sensitive`` service's body is never
relayed: it is refused (502 ``response_uninspectable``) as soon as more than its limit has arrived
(``BUFFER_CAP``), rather than once all of it is held. An MCP tools/list answer, which McpGateway
filters whole, is relayed (unfiltered) only past ``[mcp] max_body_bytes``. Left buffered: answers
made at the gateway, refused calls, other bodies an earlier addon wants whole (``STREAM_BUFFERED``).

A relayed body goes through :class:`~.event_streams.Relay` (the outcome record gets its byte count
and its first and last 64 KiB) and must keep coming: UpstreamTimeout cuts it after
``limits.upstream_timeout`` without a byte, instead of bounding the whole transfer.
"""

from __future__ import annotations

from collections.abc import Callable

from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.net.http import http1
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.proxy.layers.http._events import (
    RequestProtocolError,
    ResponseData,
    ResponseProtocolError,
)
from mitmproxy.proxy.layers.http._hooks import HttpErrorHook

from .call import KEY
from .event_streams import STREAM_BUFFERED, STREAM_FILTERS, Relay
from .inject import INJECTED

# (threshold, start): once more than threshold bytes of an unknown-length body are held, start(flow)
# gives the stream callable to relay it with (None: keep buffering).
STREAM_LATER = "wardgate.stream_later"
LaterStream = tuple[int, Callable[[http.HTTPFlow], "Relay | None"]]
# A body that must be judged whole and may not exceed this many bytes (a sensitive service's
# inspection_limit): once more has arrived, the call is answered 502 and the upstream dropped.
BUFFER_CAP = "wardgate.buffer_cap"
OVER_CAP = "the upstream response body exceeds what wardgate may hold to inspect it"


def announced_size(flow: http.HTTPFlow) -> int | None:
    """The response body's length as its head announces it; None if unknown until it ends."""
    response = flow.response
    assert response is not None
    # The common case without mitmproxy's reading of the framing headers (8 µs a call, mostly its
    # case-insensitive header lookups): one length, no transfer coding, a status and method that
    # allow a body.
    lengths = []
    for name, value in response.headers.fields:
        lowered = name.lower()
        if lowered == b"content-length":
            lengths.append(value)
        elif lowered == b"transfer-encoding":
            lengths.append(b"")
    if (len(lengths) == 1 and lengths[0].isdigit() and response.status_code >= 200
            and response.status_code not in (204, 304) and flow.request.method not in ("HEAD", "CONNECT")):
        return int(lengths[0])
    try:
        size = http1.expected_http_body_size(flow.request, response)
    except ValueError:  # refused by mitmproxy's header validation before any hook sees it
        return None
    return None if size is None or size < 0 else size


class LargeResponses:
    def __init__(self, threshold: int, listing_threshold: int) -> None:
        self._threshold = threshold
        self._listing_threshold = listing_threshold

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if (response is None or response.stream or response.raw_content is not None
                or flow.metadata.get("wardgate.refused") or INJECTED in flow.metadata
                or STREAM_LATER in flow.metadata):
            return
        call = flow.metadata.get(KEY)
        # An MCP tools/list answer is filtered whole (McpGateway), up to [mcp] max_body_bytes; past
        # that it is passed on unfiltered, as an answer that does not parse always was, and relayed.
        listing = call is not None and call.mcp is not None and call.mcp.method == "tools/list"
        if flow.metadata.get(STREAM_BUFFERED) and not listing:
            return
        relay_past(flow, announced_size(flow), self._listing_threshold if listing else self._threshold, _relay)


def relay_past(flow: http.HTTPFlow, size: int | None, threshold: int, start: Callable[[http.HTTPFlow], Relay | None]) -> None:
    """Relay the body through ``start(flow)`` from its head if its announced ``size`` passes
    ``threshold``, or, if its size is unknown, once more than ``threshold`` bytes of it have
    arrived (``install``). ``start`` answering None keeps it buffered."""
    assert flow.response is not None
    if size is None:
        flow.metadata[STREAM_LATER] = (threshold, start)
    elif size > threshold:
        flow.response.stream = start(flow) or False


def _relay(flow: http.HTTPFlow) -> Relay:
    assert flow.response is not None
    event_stream = flow.response.headers.get("content-type", "").startswith("text/event-stream")
    return Relay(flow, list(flow.metadata.get(STREAM_FILTERS, [])), idle_bound=not event_stream)


def _refuse_over_cap(stream: http_layer.HttpStream):  # type: ignore[no-untyped-def]
    """What mitmproxy does for its own body_size_limit: the agent gets 502 (rendered by
    protocol_errors as response_uninspectable), the upstream connection is closed, and the error
    hook gives AuditTrail the outcome."""
    stream.response_body_buf.clear()
    stream.flow.error = mflow.Error(OVER_CAP)
    yield HttpErrorHook(stream.flow)
    yield http_layer.SendHttp(ResponseProtocolError(stream.stream_id, OVER_CAP, 502), stream.context.client)
    stream.client_state = stream.state_errored
    yield http_layer.SendHttp(RequestProtocolError(stream.stream_id, OVER_CAP, 502), stream.context.server)
    stream.server_state = stream.state_errored
    stream.flow.live = False


def install() -> None:
    """Relay an unknown-length body once it passes its flow's ``STREAM_LATER`` threshold; refuse a body
    that must stay whole once it passes its ``BUFFER_CAP``."""
    consume = http_layer.HttpStream.state_consume_response_body
    original = getattr(consume, "wardgate_original", consume)

    def consume_or_relay(stream: http_layer.HttpStream, event):  # type: ignore[no-untyped-def]
        yield from original(stream, event)
        cap: int | None = stream.flow.metadata.get(BUFFER_CAP)
        if (cap is not None and isinstance(event, ResponseData) and len(stream.response_body_buf) > cap
                and stream.server_state == stream.state_consume_response_body):
            yield from _refuse_over_cap(stream)
            return
        later: LaterStream | None = stream.flow.metadata.get(STREAM_LATER)
        if (later is None or not isinstance(event, ResponseData) or len(stream.response_body_buf) <= later[0]
                or stream.server_state != stream.state_consume_response_body):
            return
        del stream.flow.metadata[STREAM_LATER]
        relay = later[1](stream.flow)
        if relay is None:
            return  # buffered whole after all (a scrubber that cannot decode it: refused at the end)
        held = bytes(stream.response_body_buf)
        stream.response_body_buf.clear()
        assert stream.flow.response is not None
        stream.flow.response.stream = relay
        yield from stream.start_response_stream()
        yield from stream.handle_event(ResponseData(stream.stream_id, held))

    consume_or_relay.wardgate_original = original  # type: ignore[attr-defined]
    http_layer.HttpStream.state_consume_response_body = consume_or_relay  # type: ignore[method-assign]
