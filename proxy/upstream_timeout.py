"""UpstreamTimeout: an upstream that accepts and never answers gets 504 ``upstream_timeout``, not a hung agent.

mitmproxy 11 has no read timeout of its own. This addon (last in the chain) starts a timer when a
call is forwarded (``request`` hook, after every other addon let it through) and restarts it when
the response head arrives for a response that is buffered (not streamed); the head and a buffered
body must each arrive within ``limits.upstream_timeout``. When the timer fires, the server
connection is closed; mitmproxy's protocol error for it is turned into a 504 whose message says
``timeout``, so AuditTrail records the outcome as ``upstream_timeout``. Streamed responses (event
streams) may stay open as long as the upstream keeps them open.

The TCP connect itself is bounded by the operating system (SYN retries), not by this timer: the
connection does not exist yet to be closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from mitmproxy import http
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.proxy.layers.http._events import ResponseProtocolError

log = logging.getLogger("wardgate.proxy")
TIMED_OUT = "wardgate.upstream_timed_out"
MESSAGE = "the upstream did not answer in time (timeout)"


def install() -> None:
    """Idempotent: a protocol error on a flow whose timer fired becomes a 504."""
    handle = http_layer.HttpStream.handle_protocol_error
    original = getattr(handle, "__wrapped__", handle)

    def handle_protocol_error(stream: http_layer.HttpStream, event):  # type: ignore[no-untyped-def]
        if isinstance(event, ResponseProtocolError) and stream.flow.metadata.get(TIMED_OUT):
            event.code, event.message = 504, MESSAGE
        return original(stream, event)

    handle_protocol_error.__wrapped__ = original  # type: ignore[attr-defined]
    http_layer.HttpStream.handle_protocol_error = handle_protocol_error  # type: ignore[method-assign]


class UpstreamTimeout:
    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._proxyserver: object | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def attach(self, proxyserver: object) -> None:
        self._proxyserver = proxyserver

    def _arm(self, flow: http.HTTPFlow) -> None:
        self._disarm(flow)
        loop = asyncio.get_running_loop()
        self._timers[flow.id] = loop.call_later(self._timeout, self._expire, flow)

    def _disarm(self, flow: http.HTTPFlow) -> None:
        timer = self._timers.pop(flow.id, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, flow: http.HTTPFlow) -> None:
        self._timers.pop(flow.id, None)
        handler = getattr(self._proxyserver, "connections", {}).get(flow.client_conn.id)
        server = flow.server_conn
        if handler is None or not flow.live or flow.metadata.get(TIMED_OUT):
            return
        if server not in getattr(handler, "transports", {}):
            # Still connecting (bounded by the OS): close it the moment it is there.
            self._timers[flow.id] = asyncio.get_running_loop().call_later(0.25, self._expire, flow)
            return
        log.warning("upstream %s did not answer within %.1fs; closing it", flow.request.host, self._timeout)
        flow.metadata[TIMED_OUT] = True
        with contextlib.suppress(KeyError, AssertionError):
            handler.close_connection(server)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is None and flow.live:
            self._arm(flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._disarm(flow)
        if flow.response is not None and not flow.response.stream and flow.metadata.get("wardgate.call") is not None:
            if not flow.metadata.get("wardgate.refused"):
                self._arm(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        self._disarm(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._disarm(flow)

    def done(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
