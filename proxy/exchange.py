"""GatewayExchange: a request that holds an idempotency claim is sent upstream by the gateway itself.

mitmproxy tears down the upstream connection together with the client's: an agent killed while
the upstream works on its POST would leave the gateway without the answer, and the claim could
only end as ``unknown``. So for a claimed request (proxy/idempotency.py) this addon, last in the
``request`` hook (after identity, policy, destination vetting, intent record, approval,
idempotency claim and credential injection), performs the exchange with aiohttp and sets
``flow.response``; mitmproxy then answers the client without forwarding anything.

- It dials the address DestinationPin vetted (never a fresh DNS answer), with the original name
  for SNI, certificate verification and the Host header; TLS is verified against the system store
  plus ``proxy.upstream_ca_file``, like mitmproxy's own upstream connections. Redirects are not
  followed; hop-by-hop headers are not forwarded; no connection is reused.
- The body is buffered, up to ``idempotency.max_response_bytes`` (event streams are not kept open
  for a claimed request); ``idempotency.connect_timeout`` and ``idempotency.upstream_timeout``
  bound the exchange.
- The exchange runs in its own task, shielded from the hook: when the client goes away, mitmproxy
  does not cancel a running hook and, once it returns, still runs the ``responseheaders`` and
  ``response`` hooks for the response set here (the client's disconnect waits in the stream's
  event queue), so the scrubber, Idempotency (stores it) and AuditTrail (outcome record) see it as
  for any answer. Should the hook itself be cancelled (shutdown), the task runs those two hooks on
  its own once the answer is in.
- No answer: if no upstream connection was ever made the claim is released (a retry may send it);
  if one was, the claim becomes ``unknown``. The agent gets 502 ``upstream_error`` or 504
  ``upstream_timeout``, recorded as the call's outcome.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Coroutine
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from mitmproxy import http
from mitmproxy.proxy.layers.http import HttpResponseHeadersHook, HttpResponseHook
from yarl import URL

from wardgate.gateway.audit_writer import AuditLog
from wardgate.gateway.destinations import parse_ip_literal
from wardgate.gateway.errors import UpstreamError, UpstreamTimeout, WardgateError
from wardgate.gateway.settings import IdempotencySettings

from .call import Call, call_of
from .destinations import DestinationPin
from .event_streams import STREAM_BUFFERED
from .idempotency import CLAIM, UPSTREAM_ANSWERED, Idempotency
from .refusals import error_response

log = logging.getLogger("wardgate.proxy")

# Per connection (RFC 9110 7.6.1) or per hop through the proxy: never forwarded either way.
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate", "te", "trailer",
    "transfer-encoding", "upgrade",
}
# aiohttp adds these unless told not to; the upstream gets only what the agent sent.
_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
_CHUNK = 64 * 1024


class _TooLarge(Exception):
    pass


class _Pinned(AbstractResolver):
    """Every name resolves to the one address DestinationPin vetted."""

    def __init__(self, address: str) -> None:
        self._address = address

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        ip = parse_ip_literal(self._address)
        inet = socket.AF_INET6 if ip is not None and ip.version == 6 else socket.AF_INET
        return [ResolveResult(hostname=host, host=self._address, port=port, family=inet, proto=0,
                              flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        return None


def _hop_by_hop(headers: http.Headers) -> set[str]:
    named = {name.strip().lower() for value in headers.get_all("connection") for name in value.split(",")}
    return _HOP_BY_HOP | named


def _request_headers(request: http.Request) -> list[tuple[str, str]]:
    drop = _hop_by_hop(request.headers) | {"content-length"}
    return [(name, value) for name, value in request.headers.items(multi=True) if name.lower() not in drop]


def _response(status: int, reason: str | None, raw_headers: tuple[tuple[bytes, bytes], ...], body: bytes,
              method: str) -> http.Response:
    headers = http.Headers(list(raw_headers))
    drop = _hop_by_hop(headers)
    chunked = "transfer-encoding" in headers
    headers = http.Headers([(name, value) for name, value in raw_headers if name.decode("latin-1").lower() not in drop])
    bodiless = method == "HEAD" or status in (204, 304) or 100 <= status < 200
    if not bodiless and (chunked or "content-length" not in headers):
        headers["content-length"] = str(len(body))
    now = time.time()
    return http.Response(b"HTTP/1.1", status, (reason or "").encode("latin-1", "replace"), headers, body, None,
                         now, now)


class GatewayExchange:
    def __init__(
        self, pin: DestinationPin, idempotency: Idempotency, settings: IdempotencySettings,
        trust: ssl.SSLContext, audit: AuditLog,
    ) -> None:
        self._pin = pin
        self._idempotency = idempotency
        self._settings = settings
        self._trust = trust
        self._audit = audit
        self._tasks: set[asyncio.Task[None]] = set()
        self._hooks: object | None = None

    def running(self) -> None:
        from mitmproxy import ctx

        self._hooks = ctx.master.addons

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        call = call_of(flow)
        if CLAIM not in flow.metadata or flow.response is not None or call.forwarded_at is None:
            return None
        return self._send(flow, call)

    async def _send(self, flow: http.HTTPFlow, call: Call) -> None:
        task = asyncio.create_task(self._exchange(flow), name=f"exchange {call.call_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            # The hook is gone, the exchange is not: it finishes, and the answer is still
            # scrubbed, stored and recorded by the `response` chain, run here.
            finish = asyncio.create_task(self._detached(flow, task), name=f"exchange {call.call_id} detached")
            self._tasks.add(finish)
            finish.add_done_callback(self._tasks.discard)
            raise

    async def error(self, flow: http.HTTPFlow) -> None:
        # mitmproxy saw the client leave while the `request` hook ran: it fires `error` instead of
        # the response hooks. The answer is here all the same; run them for it.
        if CLAIM in flow.metadata and flow.metadata.get(UPSTREAM_ANSWERED) and flow.response is not None:
            await self._respond(flow)

    async def _detached(self, flow: http.HTTPFlow, task: asyncio.Task[None]) -> None:
        await asyncio.wait([task])
        if CLAIM in flow.metadata and flow.metadata.get(UPSTREAM_ANSWERED) and flow.response is not None:
            await self._respond(flow)

    async def _respond(self, flow: http.HTTPFlow) -> None:
        """The `responseheaders` and `response` chain, as mitmproxy runs it for an answer set in
        `request`: scrubbers, Idempotency (stores it), AuditTrail (its outcome record)."""
        if self._hooks is None:
            log.error("call %s: answer not stored, the proxy is not running", call_of(flow).call_id)
            return
        flow.metadata["wardgate.outcome"] = True  # AuditTrail.error: the outcome is the answer, not the disconnect
        await self._hooks.trigger_event(HttpResponseHeadersHook(flow))  # type: ignore[attr-defined]
        await self._hooks.trigger_event(HttpResponseHook(flow))  # type: ignore[attr-defined]

    async def _exchange(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        address = self._pin.pinned(flow)
        if address is None:  # the client left before the destination could be looked up again
            await self._fail(flow, False, UpstreamError("the destination was not vetted", code="upstream_error"))
            return
        reached = False

        async def connected(*_: object) -> None:
            nonlocal reached
            reached = True

        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(connected)
        timeout = aiohttp.ClientTimeout(total=self._settings.upstream_timeout, connect=self._settings.connect_timeout)
        connector = aiohttp.TCPConnector(resolver=_Pinned(address), force_close=True, limit=1, use_dns_cache=False)
        try:
            async with aiohttp.ClientSession(
                connector=connector, timeout=timeout, auto_decompress=False, trace_configs=[trace],
                cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=_AUTO_HEADERS,
            ) as session:
                async with session.request(
                    request.method, URL(request.url, encoded=True), headers=_request_headers(request),
                    data=request.raw_content if request.raw_content else None, allow_redirects=False,
                    ssl=self._trust if request.scheme == "https" else False,
                ) as upstream:
                    body = bytearray()
                    async for chunk in upstream.content.iter_chunked(_CHUNK):
                        body += chunk
                        if len(body) > self._settings.max_response_bytes:
                            raise _TooLarge
                    response = _response(upstream.status, upstream.reason, upstream.raw_headers, bytes(body),
                                         request.method)
        except _TooLarge:
            await self._fail(flow, True, UpstreamError(
                "the upstream response is too large to be kept for Idempotency-Key retries",
                code="idempotency_response_too_large"))
            return
        except asyncio.TimeoutError:
            await self._fail(flow, reached, UpstreamTimeout("the upstream did not answer in time",
                                                            code="upstream_timeout"))
            return
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            log.warning("upstream exchange of call %s failed: %s", call_of(flow).call_id, type(exc).__name__)
            await self._fail(flow, reached, UpstreamError("the upstream could not be reached or failed",
                                                          code="upstream_error"))
            return
        flow.metadata[UPSTREAM_ANSWERED] = True
        flow.metadata[STREAM_BUFFERED] = True  # the whole body is here: nothing to relay as it arrives
        flow.response = response

    async def _fail(self, flow: http.HTTPFlow, reached: bool, error: WardgateError) -> None:
        await self._idempotency.settle(flow, reached)
        call = call_of(flow)
        now = time.perf_counter()
        assert call.forwarded_at is not None
        self._audit.record_later(call.record(
            flow, "outcome", status=error.status, error=error.code,
            latency_upstream_ms=(now - call.forwarded_at) * 1000, latency_total_ms=(now - call.started) * 1000,
        ))
        flow.metadata["wardgate.outcome"] = True
        flow.metadata["wardgate.refused"] = True  # answered here: AuditTrail records no second outcome
        flow.response = error_response(error, call.call_id)
