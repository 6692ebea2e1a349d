"""ApprovalGate: parks calls whose policy decision carries ``require_approval`` until a human decides.

Runs in the ``request`` hook after EgressPolicy (the call is allowed and its intent recorded) and
before Idempotency. A pending or denied approval answers 403 (``approval_required`` with
``X-Wardgate-Approval-Id``, or ``approval_denied``); an approved one is released for exactly one
forwarding. See :mod:`wardgate.gateway.approvals`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Coroutine
from typing import Any

from mitmproxy import http

from wardgate.gateway.approvals import ApprovalStore, ParkedCall
from wardgate.gateway.audit_writer import AuditLog
from wardgate.gateway.errors import DependencyUnavailable, PolicyDenied, WardgateError
from wardgate.gateway.idempotency import fingerprint
from wardgate.gateway.policy import Decision

from .call import Call, call_of
from .refusals import refuse

log = logging.getLogger("wardgate.proxy")
APPROVAL_HEADER = "X-Wardgate-Approval-Id"


class ApprovalGate:
    def __init__(self, store: ApprovalStore, ttl: float, audit: AuditLog, audit_timeout: float) -> None:
        self._store = store
        self._ttl = ttl
        self._audit = audit
        self._audit_timeout = audit_timeout

    async def _refuse(self, flow: http.HTTPFlow, error: WardgateError, approval_id: str | None = None) -> None:
        call_of(flow).forwarded_at = None
        await refuse(flow, error, self._audit, self._audit_timeout)
        if approval_id and flow.response is not None:
            flow.response.headers[APPROVAL_HEADER] = approval_id

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        call = call_of(flow)
        decision = call.decision
        if flow.response is not None or call.forwarded_at is None or decision is None or not decision.require_approval:
            return None
        return self._park(flow, call, decision)

    async def _park(self, flow: http.HTTPFlow, call: Call, decision: Decision) -> None:
        principal = call.principal
        assert principal is not None
        request = flow.request
        parked = ParkedCall(
            scope=f"{principal.tenant}\x00{principal.agent}\x00{principal.user}",
            fingerprint=fingerprint(request.method, request.scheme, request.pretty_host, request.port, request.path,
                                    request.headers.get("content-type", ""), _approved_body(call, request)),
            idempotency_key=request.headers.get("idempotency-key", ""),
            tenant=principal.tenant, agent=principal.agent, user=principal.user, run=principal.run,
            step=call.step or request.headers.get("x-wardgate-step"),
            method=request.method, host=request.pretty_host, port=request.port, path=request.path.split("?", 1)[0],
            reasons=",".join(decision.reasons),
        )
        try:
            gate = await asyncio.to_thread(self._store.gate, parked, time.time(), self._ttl)
        except Exception as exc:  # noqa: BLE001 - fail closed: an unapproved call never goes out
            log.error("approval store failed for call %s: %s", call.call_id, type(exc).__name__)
            await self._refuse(flow, DependencyUnavailable("the approval store is unavailable",
                                                           code="approvals_unavailable"))
            return
        if gate.state == "released":
            return
        if gate.state == "denied":
            await self._refuse(flow, PolicyDenied(f"approval {gate.approval_id} was denied", code="approval_denied",
                                                  reasons=list(decision.reasons)), gate.approval_id)
            return
        await self._refuse(flow, PolicyDenied(
            f"this call waits for approval {gate.approval_id}; re-send it once approved",
            code="approval_required", reasons=list(decision.reasons)), gate.approval_id)


def _approved_body(call: Call, request: http.Request) -> bytes:
    """What a human approves. For an MCP call, the method, tool and arguments: a client re-sends a
    tool call with a new JSON-RPC id (and session), which must still match the approval."""
    if call.mcp is not None:
        mcp = call.mcp
        return json.dumps([mcp.method, mcp.tool, mcp.arguments, mcp.server], sort_keys=True).encode()
    return request.raw_content or b""
