"""McpGateway: MCP over Streamable HTTP through the proxy — one policy for raw calls and tool calls.

Sits between ProxyAuth and EgressPolicy. In ``requestheaders`` it marks POSTs with a JSON body as
needing their body for the decision; in ``request`` it parses the body once, strictly
(:mod:`wardgate.gateway.mcp`), fills ``call.mcp`` for the policy input, and makes any refusal of
the call a JSON-RPC error the MCP client shows to the model. EgressPolicy then decides.

Responses: a ``tools/list`` result is cut down to the tools the caller may call (one policy query
per tool, ``mcp.listing = true``), its event stream buffered for that; every other event stream
is relayed as it arrives by EventStreams, through :class:`SseRelay` when an ``event_filter`` is
given (whole events, rewritten or dropped: where per-event scrubbing plugs in).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from mitmproxy import http

from wardgate.gateway.audit_writer import AuditLog
from wardgate.gateway.errors import BadRequest, DependencyUnavailable, ErrorResponse, WardgateError
from wardgate.gateway.mcp import (
    SseEvent,
    SseSplitter,
    error_reply,
    filter_tools,
    looks_like_mcp,
    parse_body,
    to_message,
    tool_names,
)
from wardgate.gateway.policy import McpInput, PolicyClient
from wardgate.gateway.settings import McpSettings

from .call import Call, call_of
from .decoding import decoded
from .egress import policy_input
from .event_streams import STREAM_BUFFERED, STREAM_FILTERS
from .refusals import refuse

log = logging.getLogger("wardgate.mcp")

MCP_HEADERS = ("mcp-protocol-version", "mcp-method", "mcp-session-id")
EventFilter = Callable[[SseEvent], SseEvent | None]


def _media_type(headers: http.Headers) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


def server_url(request: http.Request) -> str:
    default = 443 if request.scheme == "https" else 80
    port = "" if request.port == default else f":{request.port}"
    return f"{request.scheme}://{request.pretty_host.lower()}{port}{request.path.split('?', 1)[0]}"


class SseRelay:
    """``flow.response.stream`` for Server-Sent Events: forwards whole events as they complete.

    ``on_event`` may rewrite an event or drop it (return None); it is where credential scrubbing
    of streamed MCP responses plugs in. With no filter, bytes are relayed as they arrive.
    """

    def __init__(self, on_event: EventFilter | None = None) -> None:
        self._on_event = on_event
        self._splitter = SseSplitter()

    def __call__(self, data: bytes) -> bytes:
        if self._on_event is None:
            return data
        if not data:  # end of stream: whatever is left was never a complete event
            return self._splitter.rest()
        out = []
        for event in self._splitter.feed(data):
            kept = self._on_event(event)
            if kept is not None:
                out.append(kept.encode())
        return b"".join(out)


class McpGateway:
    def __init__(
        self,
        settings: McpSettings,
        policy: PolicyClient,
        audit: AuditLog,
        audit_timeout: float,
        event_filter: EventFilter | None = None,
    ) -> None:
        self._settings = settings
        self._policy = policy
        self._audit = audit
        self._audit_timeout = audit_timeout
        self._event_filter = event_filter

    def _declared(self, flow: http.HTTPFlow) -> bool:
        """MCP by configuration or by the headers every Streamable HTTP client sends."""
        request = flow.request
        if any(server_url(request).startswith(prefix) for prefix in self._settings.servers):
            return True
        if any(name in request.headers for name in MCP_HEADERS):
            return True
        accept = request.headers.get("accept", "").lower()
        return "text/event-stream" in accept and "application/json" in accept

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        call = call_of(flow)
        if flow.response is not None or call.principal is None or flow.request.method != "POST":
            return
        if _is_json(_media_type(flow.request.headers)) or self._declared(flow):
            call.decide_on_body = True

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        call = call_of(flow)
        if flow.response is not None or call.principal is None or not call.decide_on_body:
            return None
        return self._inspect(flow, call)

    async def _inspect(self, flow: http.HTTPFlow, call: Call) -> None:
        declared = self._declared(flow)
        body = flow.request.raw_content or b""
        try:
            try:  # never inflated past the size limit parse_body enforces (proxy/decoding.py)
                body = decoded(body, flow.request.headers.get("content-encoding"), self._settings.max_body_bytes)
            except ValueError:  # a content-encoding that does not decode
                raise BadRequest("the MCP message is not valid JSON", code="mcp_body_invalid") from None
            value = parse_body(body, max_bytes=self._settings.max_body_bytes, max_depth=self._settings.max_depth)
        except WardgateError as error:
            # Undeclared bodies that never mention JSON-RPC are some other API's business.
            if declared or b'"jsonrpc"' in body:
                call.render_error = partial(_render, request_id=None)
                await refuse(flow, error, self._audit, self._audit_timeout)
            return
        if not declared and not looks_like_mcp(value):
            return
        request_id = value.get("id") if isinstance(value, dict) else None
        call.render_error = partial(_render, request_id=request_id if isinstance(request_id, (str, int)) else None)
        try:
            message = to_message(value, {k.lower(): v for k, v in flow.request.headers.items()})
        except WardgateError as error:
            await refuse(flow, error, self._audit, self._audit_timeout)
            return
        call.render_error = partial(_render, request_id=message.id if message.kind == "request" else None)
        call.mcp = McpInput(
            method=message.method or "",
            tool=message.tool,
            arguments=message.arguments,
            server=server_url(flow.request),
            kind=message.kind,
            protocol_version=message.protocol_version,
        )

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Runs before EventStreams, which relays every event stream as it arrives."""
        response = flow.response
        if response is None or flow.metadata.get("wardgate.refused"):
            return
        if _media_type(response.headers) != "text/event-stream":
            return
        if _lists_tools(call_of(flow)):
            # A tools/list stream ends with its result, which is filtered whole in `response`.
            flow.metadata[STREAM_BUFFERED] = True
        elif self._event_filter is not None:
            flow.metadata.setdefault(STREAM_FILTERS, []).append(SseRelay(self._event_filter))

    def response(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        call = call_of(flow)
        response = flow.response
        if response is None or flow.metadata.get("wardgate.refused") or not _lists_tools(call):
            return None
        if response.status_code != 200 or response.stream:
            return None
        return self._filter_answer(flow, call)

    async def _filter_answer(self, flow: http.HTTPFlow, call: Call) -> None:
        try:
            await self._filter_listing(flow, call)
        except WardgateError as error:
            render = call.render_error or partial(_render, request_id=None)  # set, with the id, by _inspect
            rendered = render(error, call.call_id)
            flow.response = http.Response.make(rendered.status, rendered.body, rendered.headers)

    async def _filter_listing(self, flow: http.HTTPFlow, call: Call) -> None:
        response = flow.response
        assert response is not None
        media = _media_type(response.headers)
        limit = self._settings.max_body_bytes
        try:
            body = decoded(response.raw_content or b"", response.headers.get("content-encoding"), limit)
        except ValueError:
            return
        if len(body) > limit:  # like an answer that does not parse: passed on as it came
            log.info("call %s: tools/list answer larger than %d bytes, not filtered", call.call_id, limit)
            return
        if _is_json(media):
            try:
                message = json.loads(body)
            except ValueError:
                return
            allowed = await self._allowed_tools(flow, tool_names(message.get("result") if isinstance(message, dict) else None))
            response.text = json.dumps(filter_tools(message, allowed), separators=(",", ":"))
        elif media == "text/event-stream":
            splitter = SseSplitter()
            events = splitter.feed(body)
            out = []
            for event in events:
                data = event.data
                message = _json_or_none(data) if data else None
                if isinstance(message, dict) and isinstance(message.get("result"), dict):
                    allowed = await self._allowed_tools(flow, tool_names(message["result"]))
                    event = event.with_data(json.dumps(filter_tools(message, allowed), separators=(",", ":")))
                if self._event_filter is not None:
                    event = self._event_filter(event)
                if event is not None:
                    out.append(event.encode())
            response.content = b"".join(out) + splitter.rest()

    async def _allowed_tools(self, flow: http.HTTPFlow, names: list[str]) -> set[str]:
        """Ask the policy once per tool whether this caller may call it; fail closed."""
        base = policy_input(flow)
        assert call_of(flow).mcp is not None
        server, protocol_version = base["mcp"].get("server"), base["mcp"].get("protocol_version")
        gate = asyncio.Semaphore(self._settings.list_concurrency)

        async def may_call(name: str) -> bool:
            probe = McpInput(method="tools/call", tool=name, server=server, kind="request",
                             protocol_version=protocol_version, listing=True)
            async with gate:
                decision = await self._policy.decide({**base, "mcp": probe.model_dump(mode="json", exclude_none=True)})
            return decision.allow or decision.report_only

        verdicts = await asyncio.gather(*(may_call(name) for name in names), return_exceptions=True)
        for verdict in verdicts:
            if isinstance(verdict, WardgateError):
                raise verdict
            if isinstance(verdict, BaseException):
                raise DependencyUnavailable("tools/list could not be checked", code="policy_unavailable")
        hidden = [name for name, ok in zip(names, verdicts) if ok is not True]
        if hidden:
            log.info("call %s: tools/list hides %d of %d tools", call_of(flow).call_id, len(hidden), len(names))
        return {name for name, ok in zip(names, verdicts) if ok is True}


def _lists_tools(call: Call) -> bool:
    return call.mcp is not None and call.mcp.method == "tools/list" and call.decision is not None and call.decision.allow


def _json_or_none(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _render(error: WardgateError, audit_id: str, *, request_id: str | int | None) -> ErrorResponse:
    return error_reply(error, audit_id, request_id)
