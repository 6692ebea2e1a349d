"""Upstream time limits: a connect that never completes and an upstream that never answers get 504, not a hung agent.

mitmproxy 11 bounds neither. ``ConnectionHandler.open_connection`` awaits ``asyncio.open_connection``
with no timeout, so a destination that drops SYNs holds the call for as long as the operating
system retries them (about two minutes on Linux), and no option of mitmproxy 11.0 changes that.

ConnectTimeout (``limits.connect_timeout``) uses the public ``server_connect`` hook, which mitmproxy
runs inside the very task that then dials, after DestinationPin chose the vetted address: it arms a
timer there and disarms it in ``server_connected``/``server_connect_error``. When the timer fires
while that task is still dialling, the task is cancelled with :data:`CONNECT_TIMED_OUT` as the
cancel message; mitmproxy's own ``except (OSError, CancelledError)`` around the dial turns it into
the connection's error, so the call fails like any unreachable upstream, and the patched
``handle_protocol_error`` below answers 504 ``upstream_connect_timeout``. The same holds for a
request inside an intercepted CONNECT tunnel: with ``connection_strategy = "lazy"`` its upstream
connection is opened for the inner request, through the same hook.

UpstreamTimeout (``limits.upstream_timeout``, last in the chain) starts a timer when a call is
forwarded (``request`` hook, after every other addon let it through) and restarts it when the
response head arrives for a response that is buffered (not streamed); the head and a buffered body
must each arrive within ``limits.upstream_timeout``. When the timer fires, the server connection is
closed; mitmproxy's protocol error for it is turned into a 504 whose message says ``timeout``, so
AuditTrail records the outcome as ``upstream_timeout``. Event streams may stay open as long as the
upstream keeps them open. A large body relayed as it arrives (proxy/large_responses.py) may take
as long as it needs, but not ``limits.upstream_timeout`` without a byte: then its connection is
closed the same way (the head is out already, so the agent sees the body cut short).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from mitmproxy import http
from mitmproxy.connection import ConnectionState, Server
from mitmproxy.proxy import server_hooks
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.proxy.layers.http._events import ResponseProtocolError

from .event_streams import Relay

log = logging.getLogger("wardgate.proxy")
TIMED_OUT = "wardgate.upstream_timed_out"
MESSAGE = "the upstream did not answer in time (timeout)"
# The cancel message of a dial that ran out of time; it becomes the connection's error, the flow's
# error and the ResponseProtocolError's message, which is how the renderer and AuditTrail know it.
CONNECT_TIMED_OUT = "wardgate: the upstream did not accept the connection within limits.connect_timeout"


def install() -> None:
    """Idempotent: a protocol error on a flow whose read timer fired, or whose dial ran out of time, becomes a 504."""
    handle = http_layer.HttpStream.handle_protocol_error
    original = getattr(handle, "__wrapped__", handle)

    def handle_protocol_error(stream: http_layer.HttpStream, event):  # type: ignore[no-untyped-def]
        if isinstance(event, ResponseProtocolError):
            if event.message == CONNECT_TIMED_OUT:
                event.code = 504
            elif stream.flow.metadata.get(TIMED_OUT):
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
        relay = flow.response.stream if flow.response is not None else None
        if isinstance(relay, Relay) and relay.idle_bound:
            quiet = time.monotonic() - relay.last_data
            if quiet < self._timeout:
                self._timers[flow.id] = asyncio.get_running_loop().call_later(self._timeout - quiet, self._expire, flow)
                return
        handler = getattr(self._proxyserver, "connections", {}).get(flow.client_conn.id)
        server = flow.server_conn
        if handler is None or not flow.live or flow.metadata.get(TIMED_OUT):
            return
        if server not in getattr(handler, "transports", {}):
            # Still connecting (bounded by ConnectTimeout): close it the moment it is there.
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
        response = flow.response
        if response is None:
            return
        relayed = isinstance(response.stream, Relay) and response.stream.idle_bound
        if (not response.stream or relayed) and flow.metadata.get("wardgate.call") is not None:
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


class ConnectTimeout:
    """Bounds each upstream dial mitmproxy makes to ``timeout`` seconds (see the module docstring)."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._proxyserver: object | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}  # server connection id → its deadline

    def attach(self, proxyserver: object) -> None:
        self._proxyserver = proxyserver

    def _arm(self, delay: float, client_id: str, server: Server) -> None:
        loop = asyncio.get_running_loop()
        self._timers[server.id] = loop.call_later(delay, self._expire, client_id, server)

    def _disarm(self, server: Server) -> None:
        timer = self._timers.pop(server.id, None)
        if timer is not None:
            timer.cancel()

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if data.server.error is None:  # else an earlier addon (DestinationPin) refused it: never dialled
            self._arm(self._timeout, data.client.id, data.server)

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._disarm(data.server)

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._disarm(data.server)

    def _expire(self, client_id: str, server: Server) -> None:
        self._timers.pop(server.id, None)
        # Connected (state OPEN is set in the same step the dial returns) or failed: nothing to bound.
        if server.state is not ConnectionState.CLOSED or server.error is not None:
            return
        # mitmproxy stamps timestamp_start when the dial begins; before that the task waits for a slot
        # under its limit of five connections per address, which is not this limit's business. The
        # deadline counts from the stamp, so only the dial itself is bounded.
        started = server.timestamp_start
        remaining = self._timeout if started is None else self._timeout - (time.time() - started)
        if remaining > 0.001:
            self._arm(remaining, client_id, server)
            return
        handler = getattr(self._proxyserver, "connections", {}).get(client_id)
        io = getattr(handler, "transports", {}).get(server)
        if io is None or io.handler is None or io.handler.done():
            return
        log.warning("upstream %s did not accept the connection within %.1fs", server.address, self._timeout)
        io.handler.cancel(CONNECT_TIMED_OUT)

    def done(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
