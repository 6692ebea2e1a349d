"""Answering a call at the gateway: the audit record first, then the error response."""

from __future__ import annotations

import logging
import time

from mitmproxy import http

from wardgate.gateway.audit_writer import AuditLog
from wardgate.gateway.errors import WardgateError, to_response

from .call import call_of

log = logging.getLogger("wardgate.proxy")


def error_response(error: WardgateError, audit_id: str | None) -> http.Response:
    rendered = to_response(error, audit_id)
    return http.Response.make(rendered.status, rendered.body, rendered.headers)


async def refuse(flow: http.HTTPFlow, error: WardgateError, audit: AuditLog, timeout: float) -> None:
    """Record the refusal durably, then set ``flow.response`` so nothing goes upstream."""
    call = call_of(flow)
    record = call.record(
        flow,
        "refusal",
        status=error.status,
        error=error.code,
        latency_total_ms=(time.perf_counter() - call.started) * 1000,
    )
    if error.reasons and not record.reasons:
        record.reasons = list(error.reasons)
    if record.decision is None:
        record.decision = "deny" if error.status in (400, 403, 407) else "error"
    try:
        await audit.commit(record, timeout, spool_on_failure=True)
    except WardgateError as audit_error:
        # The call is refused either way; the record follows through the spool if the store is down.
        log.error("refusal of call %s not committed in time: %s", call.call_id, audit_error.code)
    if call.render_error is not None:
        rendered = call.render_error(error, call.call_id)
        flow.response = http.Response.make(rendered.status, rendered.body, rendered.headers)
    else:
        flow.response = error_response(error, call.call_id)
    flow.metadata["wardgate.refused"] = True
