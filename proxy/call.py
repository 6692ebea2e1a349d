"""Per-call state carried on ``flow.metadata`` from one addon to the next."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mitmproxy import http

from wardgate.gateway.audit import AuditRecord, Kind
from wardgate.gateway.identity import Principal
from wardgate.gateway.ids import new_id
from wardgate.gateway.policy import Decision, McpInput

KEY = "wardgate.call"


@dataclass(slots=True)
class Call:
    call_id: str = field(default_factory=new_id)
    started: float = field(default_factory=time.perf_counter)
    principal: Principal | None = None
    decision: Decision | None = None
    policy_ms: float | None = None
    forwarded_at: float | None = None
    # Filled by addons that run before EgressPolicy; the policy input is built from them.
    credential_service: str | None = None
    mcp: McpInput | None = None
    step: str | None = None
    # Set by Idempotency: the caller's key, and whether the response is a stored one replayed.
    idempotency_key: str | None = None
    replay: bool = False
    # Occurrences of an injected secret removed from the response (proxy/scrub.py).
    scrub_count: int = 0

    def record(self, flow: http.HTTPFlow, kind: Kind, **values: object) -> AuditRecord:
        """An audit record for this call, filled from the principal, the request and ``values``."""
        request = flow.request
        principal = self.principal
        decision = self.decision
        record = AuditRecord(
            call_id=self.call_id,
            kind=kind,
            method=request.method,
            scheme=request.scheme,
            host=request.pretty_host if request.method != "CONNECT" else request.host,
            port=request.port,
            path=request.path.split("?", 1)[0] if request.method != "CONNECT" else None,
            latency_policy_ms=self.policy_ms,
            credential_service=self.credential_service,
            trace_id=flow.metadata.get("wardgate.trace_id"),
            scrub_count=self.scrub_count,
        )
        if principal is not None:
            record.tenant, record.agent, record.user = principal.tenant, principal.agent, principal.user
            record.token_id, record.run = principal.token_id, principal.run
        if decision is not None:
            record.decision = "allow" if decision.allow else "deny"
            record.reasons = list(decision.reasons)
            record.decision_id = decision.decision_id
        record.step = self.step or request.headers.get("x-wardgate-step")
        record.idempotency_key, record.replay = self.idempotency_key, int(self.replay)
        for name, value in values.items():
            setattr(record, name, value)
        return record


def call_of(flow: http.HTTPFlow) -> Call:
    call = flow.metadata.get(KEY)
    if call is None:
        call = flow.metadata[KEY] = Call()
    return call
