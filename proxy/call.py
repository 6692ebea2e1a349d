"""Per-call state carried on ``flow.metadata`` from one addon to the next."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import http

from wardgate.gateway.audit import AuditRecord, Kind
from wardgate.gateway.audit_writer import PendingCommit
from wardgate.gateway.identity import Principal
from wardgate.gateway.ids import new_id
from wardgate.gateway.errors import ErrorResponse, WardgateError
from wardgate.gateway.mcp import redact
from wardgate.gateway.policy import Decision, McpInput

KEY = "wardgate.call"


@dataclass(slots=True)
class Call:
    call_id: str = field(default_factory=new_id)
    started: float = field(default_factory=time.perf_counter)
    principal: Principal | None = None
    decision: Decision | None = None
    policy_ms: float | None = None
    # Set once the intent record is durable and the call may leave (proxy/intent.py); cleared again
    # by a refusal after that (approval, idempotency, injection), whose record then closes the call.
    forwarded_at: float | None = None
    # The intent record, sent as soon as the call was judged and waited for just before it leaves.
    intent: PendingCommit | None = None
    # Filled by addons that run before EgressPolicy; the policy input is built from them.
    credential_service: str | None = None
    mcp: McpInput | None = None
    step: str | None = None
    # Set by Idempotency: the caller's key, and whether the response is a stored one replayed.
    idempotency_key: str | None = None
    replay: bool = False
    # Set in requestheaders when the decision needs the body (MCP): EgressPolicy decides in `request`.
    decide_on_body: bool = False
    # How a refusal of this call is rendered when not as wardgate's JSON error (MCP: JSON-RPC error).
    render_error: Callable[[WardgateError, str], ErrorResponse] | None = None
    # The document the decision was asked on; kept with the intent or refusal record.
    policy_document: dict[str, Any] | None = None
    # Denied, but the policy is in report mode for this caller: recorded as would_deny, forwarded.
    would_deny: bool = False
    policy_revision: str | None = None
    # Occurrences of an injected secret removed from the response (proxy/scrub.py).
    scrub_count: int = 0
    # Method, scheme, host, port, path and x-wardgate-step as the first record of the call saw them.
    request_line: tuple[str, str, str, int, str | None, str | None] | None = None

    def owes_outcome(self, flow: http.HTTPFlow) -> bool:
        """The call's intent record is durable or on its way and no refusal closed the call: however
        it ends (413, 408, an upstream error, the agent gone), its end is an outcome record."""
        if self.forwarded_at is not None:
            return True
        return self.intent is not None and not flow.metadata.get("wardgate.refused")

    @property
    def proceeds(self) -> bool:
        """The policy let this call go on: allowed, or denied in report mode (would_deny)."""
        return self.decision is not None and (self.decision.allow or self.would_deny)

    def record(self, flow: http.HTTPFlow, kind: Kind, **values: object) -> AuditRecord:
        """An audit record for this call, filled from the principal, the request and ``values``."""
        line = self.request_line
        if line is None:  # the request as the call was judged: the same in its intent and outcome
            line = self.request_line = _request_line(flow.request)
        method, scheme, host, port, path, step = line
        principal = self.principal
        decision = self.decision
        record = AuditRecord(
            call_id=self.call_id,
            kind=kind,
            method=method,
            scheme=scheme,
            host=host,
            port=port,
            path=path,
            step=self.step or step,
            latency_policy_ms=self.policy_ms,
            credential_service=self.credential_service,
            trace_id=flow.metadata.get("wardgate.trace_id"),
            scrub_count=self.scrub_count,
            idempotency_key=self.idempotency_key,
            replay=int(self.replay),
        )
        if principal is not None:
            record.tenant, record.agent, record.user = principal.tenant, principal.agent, principal.user
            record.token_id, record.run = principal.token_id, principal.run
        if decision is not None:
            record.decision = "would_deny" if self.would_deny else "allow" if decision.allow else "deny"
            record.reasons = list(decision.reasons)
            record.decision_id = decision.decision_id
            record.policy_revision = self.policy_revision
        if self.mcp is not None:
            record.mcp_method, record.mcp_tool = self.mcp.method, self.mcp.tool
            # Arguments are kept only once the policy has said which of them are sensitive.
            if self.mcp.arguments is not None and decision is not None:
                record.mcp_arguments = json.dumps(redact(self.mcp.arguments, decision.redact), sort_keys=True)
        if self.policy_document is not None and kind != "outcome":
            record.policy_input = self._recorded_input()
        for name, value in values.items():
            setattr(record, name, value)
        return record

    def _recorded_input(self) -> str:
        assert self.policy_document is not None
        document = self.policy_document
        mcp = document.get("mcp")
        if mcp and "arguments" in mcp:
            document, mcp = {**document}, {**mcp}
            document["mcp"] = mcp
            paths = self.decision.redact if self.decision is not None else None
            # No decision (policy unavailable): nobody said what is sensitive, so keep nothing.
            mcp["arguments"] = redact(mcp["arguments"], paths) if paths is not None else {}
        return json.dumps(document, sort_keys=True, separators=(",", ":"))


def _request_line(request: http.Request) -> tuple[str, str, str, int, str | None, str | None]:
    connect = request.method == "CONNECT"
    return (
        request.method,
        request.scheme,
        request.host if connect else request.pretty_host,
        request.port,
        None if connect else request.path.split("?", 1)[0],
        request.headers.get("x-wardgate-step"),
    )


def call_of(flow: http.HTTPFlow) -> Call:
    call = flow.metadata.get(KEY)
    if call is None:
        call = flow.metadata[KEY] = Call()
    return call
