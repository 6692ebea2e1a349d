"""EgressPolicy: asks OPA whether the identified call may go out.

Runs in ``requestheaders`` after ProxyAuth and DestinationCheck (in ``request``, once the body is
read, for calls McpGateway marks as MCP). A denial or an unavailable policy engine answers the
call here, before any DNS lookup or upstream connection. An allowed call goes on to DestinationPin
and IntentRecord.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Coroutine
from typing import Any
from urllib.parse import parse_qs

from mitmproxy import http

from wardgate.gateway.audit_writer import AuditLog
from wardgate.gateway.errors import PolicyDenied, WardgateError
from wardgate.gateway.policy import Decision, PolicyClient, policy_headers, time_document

from .call import call_of
from .refusals import refuse

log = logging.getLogger("wardgate.policy")


def policy_input(flow: http.HTTPFlow) -> dict[str, Any]:
    """The input document for this call, as the plain dict posted to OPA.

    Shaped exactly like ``PolicyInput(...).model_dump(mode="json", exclude_none=True)`` (the model
    stays the documented schema; tests/proxy/test_policy_input_document.py holds them together),
    built without pydantic because it is built for every call.
    """
    call = call_of(flow)
    principal = call.principal
    assert principal is not None
    request = flow.request
    path, _, query = request.path.partition("?")
    identity: dict[str, Any] = {
        "agent": principal.agent,
        "user": principal.user,
        "tenant": principal.tenant,
        "scopes": list(principal.scopes),
        "token_id": principal.token_id,
        "issuer": principal.issuer,
    }
    if principal.run is not None:
        identity["run"] = principal.run
    headers = request.headers
    document: dict[str, Any] = {
        "version": 1,
        "identity": identity,
        "request": {
            "method": request.method,
            "scheme": "https" if request.scheme == "https" else "http",
            "host": request.pretty_host.lower(),
            "port": request.port,
            "path": path or "/",
            "query": parse_qs(query, keep_blank_values=True) if query else {},
            "headers": policy_headers(headers.items(multi=True)),
        },
    }
    if call.credential_service:
        document["credential"] = {"service": call.credential_service}
    if call.mcp is not None:
        document["mcp"] = call.mcp.model_dump(mode="json", exclude_none=True)
    if principal.run:
        step = call.step or headers.get("x-wardgate-step")
        document["run"] = {"id": principal.run} if step is None else {"id": principal.run, "step": step}
    document["time"] = time_document()
    return document


class EgressPolicy:
    def __init__(self, policy: PolicyClient, audit: AuditLog, audit_timeout: float) -> None:
        self._policy = policy
        self._audit = audit
        self._audit_timeout = audit_timeout

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        call = call_of(flow)
        if flow.response is not None or call.principal is None or call.decide_on_body:
            return None
        return self._decide(flow)

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """Calls whose decision needs the body (MCP, marked by McpGateway) are decided here."""
        call = call_of(flow)
        if flow.response is not None or call.principal is None or not call.decide_on_body:
            return None
        return self._decide(flow)

    def _decide(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """Decided here and now when an earlier call's decision applies (gateway/decision_cache.py),
        as for nearly every call; a coroutine to wait for OPA otherwise, or for a refusal's record
        (proxy/inline_hooks.py)."""
        call = call_of(flow)
        started = time.perf_counter()
        try:
            call.policy_document = policy_input(flow)
            call.policy_revision = self._policy.revision
            decision = self._policy.decided(call.policy_document)
        except WardgateError as error:
            call.policy_ms = (time.perf_counter() - started) * 1000
            return refuse(flow, error, self._audit, self._audit_timeout)
        if decision is None:
            return self._ask(flow, started)
        return self._judged(flow, decision, started)

    async def _ask(self, flow: http.HTTPFlow, started: float) -> None:
        call = call_of(flow)
        assert call.policy_document is not None
        try:
            decision = await self._policy.ask(call.policy_document)
        except WardgateError as error:
            call.policy_ms = (time.perf_counter() - started) * 1000
            await refuse(flow, error, self._audit, self._audit_timeout)
            return
        refusal = self._judged(flow, decision, started)
        if refusal is not None:
            await refusal

    def _judged(self, flow: http.HTTPFlow, decision: Decision, started: float) -> Coroutine[Any, Any, None] | None:
        call = call_of(flow)
        call.decision = decision
        call.policy_ms = (time.perf_counter() - started) * 1000
        if not decision.allow and decision.report_only:
            call.would_deny = True
            log.warning("call %s would be denied (%s); report mode lets it through",
                        call.call_id, ",".join(decision.reasons))
        elif not decision.allow:
            denied = PolicyDenied("the policy does not allow this call", reasons=decision.reasons)
            return refuse(flow, denied, self._audit, self._audit_timeout)
        return None
