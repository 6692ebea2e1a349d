"""IntentRecord: no record, no forwarding.

An allowed call's intent record goes to the audit writer as soon as the call is judged (the last
``requestheaders`` step; ``request`` for MCP calls, judged on their body) and is waited for in the
``request`` step, before approval, idempotency, injection and anything that sends: the commit runs
while the rest of the request is read. The call is forwarded only once the record is durable; if
that cannot happen within ``audit.commit_timeout`` of sending it the agent gets 503
``audit_unavailable`` and nothing is sent upstream. Request bodies are never streamed (framing.py),
so nothing of the call leaves before the ``request`` step ends.
"""

from __future__ import annotations

import time
from collections.abc import Coroutine
from typing import Any

from mitmproxy import http

from wardgate.gateway.audit_writer import AuditLog, PendingCommit
from wardgate.gateway.errors import WardgateError

from .call import Call, call_of
from .refusals import refuse


class IntentRecord:
    def __init__(self, audit: AuditLog, audit_timeout: float) -> None:
        self._audit = audit
        self._audit_timeout = audit_timeout

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        call = call_of(flow)
        if call.decide_on_body:
            return None
        self._send(flow, call)
        if call.intent is not None and call.intent.done:  # the writer is down: refused before the body is read
            return self._forwardable(flow, call)
        return None

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        call = call_of(flow)
        if call.decide_on_body:  # MCP: decided once the body was read
            self._send(flow, call)
        if call.intent is None or call.forwarded_at is not None or flow.response is not None:
            return None
        return self._forwardable(flow, call)

    def _send(self, flow: http.HTTPFlow, call: Call) -> None:
        if flow.response is None and call.proceeds:
            call.intent = PendingCommit(self._audit, call.record(flow, "intent"), self._audit_timeout)

    async def _forwardable(self, flow: http.HTTPFlow, call: Call) -> None:
        assert call.intent is not None
        try:
            await call.intent.wait()
        except WardgateError as error:
            await refuse(flow, error, self._audit, self._audit_timeout)
            return
        call.forwarded_at = time.perf_counter()
