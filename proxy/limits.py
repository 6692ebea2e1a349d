"""Limits: what one agent may hold open and how fast it may call; slow and idle clients are closed.

Runs right after ProxyAuth, so every limit is counted per agent (tenant, agent):

- open CONNECT tunnels above ``max_tunnels_per_agent`` → 429 ``too_many_tunnels`` + Retry-After,
- requests above ``requests_per_second`` (token bucket of ``burst``) → 429 ``rate_limited`` + Retry-After.

A watchdog closes connections whose request head has been arriving for longer than
``header_timeout`` (slowloris) and connections or tunnels waiting for their next request for
longer than ``idle_timeout``. The same watchdog bounds a request body: from the request head
(``requestheaders``) to the end of its body (``request``) at most ``body_timeout``, else the
stream is told to answer 408 ``request_timeout`` (``framing.BodyLate``). Header size, header count
and body size are checked earlier, inside the HTTP/1 layer (``framing.py``); the body refusals (413,
408) are recorded here, in the ``error`` hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Coroutine
from typing import Any

from mitmproxy import connection, http
from mitmproxy.net.http import http1
from mitmproxy.proxy import events

from wardgate.gateway.audit_writer import AuditLog
from wardgate.gateway.errors import TooManyRequests, WardgateError
from wardgate.gateway.settings import LimitsSettings

from .agent_counts import AgentKey, LocalCounts, SharedCounts
from .call import KEY, call_of
from .framing import BODY_LIMIT_MESSAGE, BODY_TIMEOUT_MESSAGE, BodyLate, HeadGuard
from .refusals import refuse

log = logging.getLogger("wardgate.proxy")


class Limits:
    def __init__(self, settings: LimitsSettings, heads: HeadGuard, audit: AuditLog, audit_timeout: float,
                 tick: float = 0.25, counts: LocalCounts | SharedCounts | None = None) -> None:
        self._settings = settings
        self._heads = heads
        self._audit = audit
        self._audit_timeout = audit_timeout
        self._tick = tick
        # Request buckets and tunnel counts: the gateway's workers share theirs (proxy/agent_counts.py).
        self._counts = counts if counts is not None else LocalCounts(settings.requests_per_second, settings.burst)
        self._tunnel_owner: dict[str, AgentKey] = {}  # client id → the agent whose tunnel it is
        self._waiting: dict[str, float] = {}  # client id → since when it waits for its next request
        # client id → (since when, flow) for a request whose head was read and whose body is still arriving
        self._bodies: dict[str, tuple[float, http.HTTPFlow]] = {}
        self._proxyserver: object | None = None
        self._watchdog: asyncio.Task[None] | None = None

    def attach(self, proxyserver: object) -> None:
        self._proxyserver = proxyserver

    # -- per-agent counts -------------------------------------------------------------------

    async def _too_many(self, flow: http.HTTPFlow, error: WardgateError, retry_after: float) -> None:
        await refuse(flow, error, self._audit, self._audit_timeout)
        assert flow.response is not None
        flow.response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        principal = call_of(flow).principal
        if flow.response is not None or principal is None:
            return
        key = (principal.tenant, principal.agent)
        if flow.client_conn.id not in self._tunnel_owner:  # a connection counts as one tunnel
            held = self._counts.open_tunnel(key, self._settings.max_tunnels_per_agent)
            if held is not None:
                error = TooManyRequests(f"agent has {held} tunnels open, the limit", code="too_many_tunnels")
                await self._too_many(flow, error, 1)
                return
            self._tunnel_owner[flow.client_conn.id] = key
        self._waiting[flow.client_conn.id] = time.monotonic()

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        self._waiting.pop(flow.client_conn.id, None)
        if _expects_body(flow.request):  # refused or not: the connection is held until the body is read
            self._bodies[flow.client_conn.id] = (time.monotonic(), flow)
        principal = call_of(flow).principal
        if flow.response is not None or principal is None:
            return None
        wait = self._counts.take((principal.tenant, principal.agent), time.monotonic())
        if wait > 0:
            error = TooManyRequests(f"agent exceeds {self._settings.requests_per_second:g} requests per second")
            return self._too_many(flow, error, wait)
        return None

    def request(self, flow: http.HTTPFlow) -> None:
        self._bodies.pop(flow.client_conn.id, None)

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and flow.response.status_code != 101 and flow.client_conn.connected:
            self._waiting[flow.client_conn.id] = time.monotonic()

    async def error(self, flow: http.HTTPFlow) -> None:
        existing = self._bodies.get(flow.client_conn.id)
        if existing is not None and existing[1] is flow:
            del self._bodies[flow.client_conn.id]
        message = flow.error.msg if flow.error is not None else None
        if message == BODY_LIMIT_MESSAGE:
            await self._body_refused(flow, 413, "request_too_large", "body_bytes")
        elif message == BODY_TIMEOUT_MESSAGE:
            await self._body_refused(flow, 408, "request_timeout", "body_timeout")
        elif flow.client_conn.connected:
            self._waiting[flow.client_conn.id] = time.monotonic()

    async def _body_refused(self, flow: http.HTTPFlow, status: int, code: str, reason: str) -> None:
        """413 or 408 from framing.py: the outcome of the call's intent if it has one, else a refusal
        (unless the call was refused already: that refusal is its record)."""
        seen = KEY in flow.metadata
        call = call_of(flow)
        latency = (time.perf_counter() - call.started) * 1000
        owed = seen and call.owes_outcome(flow)
        if owed or (seen and flow.metadata.get("wardgate.refused")):
            # Judged (and maybe its intent recorded) on its head. It never left; its outcome says why,
            # so AuditTrail does not call it an upstream error.
            if owed and not flow.metadata.get("wardgate.outcome"):
                flow.metadata["wardgate.outcome"] = True
                self._audit.record_later(call.record(flow, "outcome", status=status, error=code,
                                                     latency_total_ms=latency))
            return
        # Not judged yet: refused in the layer before any addon saw it, or its decision waits for the body (MCP).
        record = call.record(flow, "refusal", status=status, error=code, latency_total_ms=latency)
        record.decision = "deny"
        record.reasons = [reason]
        try:
            await self._audit.commit(record, self._audit_timeout, spool_on_failure=True)
        except WardgateError as audit_error:
            log.error("refusal of call %s not committed in time: %s", call.call_id, audit_error.code)

    def client_connected(self, client: connection.Client) -> None:
        self._waiting[client.id] = time.monotonic()

    def client_disconnected(self, client: connection.Client) -> None:
        self._waiting.pop(client.id, None)
        self._bodies.pop(client.id, None)
        self._heads.head_started.pop(client.id, None)
        key = self._tunnel_owner.pop(client.id, None)
        if key is not None:
            self._counts.close_tunnel(key)

    # -- watchdog ---------------------------------------------------------------------------

    def running(self) -> None:
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch_forever(), name="limits-watchdog")

    def done(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _close(self, client_id: str, why: str) -> None:
        self._waiting.pop(client_id, None)
        self._heads.head_started.pop(client_id, None)
        handler = getattr(self._proxyserver, "connections", {}).get(client_id)
        if handler is None:
            return
        log.info("closing client connection %s: %s", client_id, why)
        with contextlib.suppress(KeyError, AssertionError):
            handler.close_connection(handler.client)

    def _body_late(self, flow: http.HTTPFlow) -> None:
        inject = getattr(self._proxyserver, "inject_event", None)
        if inject is None:
            return
        log.info("request body on client connection %s is late: body_timeout", flow.client_conn.id)
        with contextlib.suppress(ValueError):  # the connection is already gone
            inject(events.MessageInjected(flow, BodyLate()))

    def sweep(self, now: float) -> None:
        for client_id, since in list(self._heads.head_started.items()):
            if now - since > self._settings.header_timeout:
                self._close(client_id, "header_timeout")
        for client_id, since in list(self._waiting.items()):
            if client_id not in self._heads.head_started and now - since > self._settings.idle_timeout:
                self._close(client_id, "idle_timeout")
        for client_id, (since, flow) in list(self._bodies.items()):
            if now - since > self._settings.body_timeout:
                del self._bodies[client_id]
                self._body_late(flow)
        # Buckets of agents that have been quiet long enough to be full again cost nothing to forget.
        self._counts.forget_quiet(now)

    async def _watch_forever(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            try:
                self.sweep(time.monotonic())
            except Exception:  # noqa: BLE001 - the watchdog must keep running
                log.exception("limits watchdog failed")


def _expects_body(request: http.Request) -> bool:
    try:
        size = http1.expected_http_body_size(request, None)
    except ValueError:  # malformed framing is refused in the layer before any hook
        return False
    return size != 0
