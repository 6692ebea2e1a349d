"""IntentRecord: no record, no forwarding.

The last ``requestheaders`` step before a call leaves: an allowed call is forwarded only once its
intent record is durably committed; if that cannot happen within ``audit.commit_timeout`` the agent
gets 503 ``audit_unavailable`` and nothing is sent upstream.
"""

from __future__ import annotations

import time
from collections.abc import Coroutine
from typing import Any

from mitmproxy import http

from wardgate.gateway.audit_writer import AuditLog
from wardgate.gateway.errors import WardgateError

from .call import call_of
from .refusals import refuse


class IntentRecord:
    def __init__(self, audit: AuditLog, audit_timeout: float) -> None:
        self._audit = audit
        self._audit_timeout = audit_timeout

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not call_of(flow).decide_on_body:
            await self._commit(flow)

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        if call_of(flow).decide_on_body:  # MCP: decided once the body was read
            return self._commit(flow)
        return None

    async def _commit(self, flow: http.HTTPFlow) -> None:
        call = call_of(flow)
        if flow.response is not None or not call.proceeds:
            return
        try:
            await self._audit.commit(call.record(flow, "intent"), self._audit_timeout)
        except WardgateError as error:
            await refuse(flow, error, self._audit, self._audit_timeout)
            return
        call.forwarded_at = time.perf_counter()
