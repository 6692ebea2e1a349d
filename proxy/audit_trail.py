"""AuditTrail: the outcome record of every forwarded call, and the audit id on every response."""

from __future__ import annotations

import json
import time

from mitmproxy import http

from wardgate.gateway.audit_writer import AuditWriter
from wardgate.gateway.usage import extract_usage

from .call import KEY, call_of
from .event_streams import STREAM_SAMPLE
from .upstream_timeout import CONNECT_TIMED_OUT


class AuditTrail:
    def __init__(self, audit: AuditWriter) -> None:
        self._audit = audit

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if KEY in flow.metadata and flow.response is not None:
            flow.response.headers["X-Wardgate-Audit-Id"] = call_of(flow).call_id

    def response(self, flow: http.HTTPFlow) -> None:
        call = flow.metadata.get(KEY)
        if call is None or flow.metadata.get("wardgate.refused") or call.forwarded_at is None:
            return
        assert flow.response is not None
        now = time.perf_counter()
        if flow.response.raw_content is not None:
            body = flow.response.get_content(strict=False)
        else:  # streamed through (EventStreams): the head and tail it kept
            body = flow.metadata.get(STREAM_SAMPLE)
        usage = extract_usage(flow.response.headers.get("content-type"), body)
        self._audit.record_later(
            call.record(
                flow,
                "outcome",
                status=flow.response.status_code,
                bytes_in=len(flow.request.raw_content or b""),
                bytes_out=len(flow.response.raw_content or b""),
                latency_upstream_ms=(now - call.forwarded_at) * 1000,
                latency_total_ms=(now - call.started) * 1000,
                usage=json.dumps(usage, sort_keys=True) if usage else None,
            )
        )

    def error(self, flow: http.HTTPFlow) -> None:
        call = flow.metadata.get(KEY)
        if call is None or call.forwarded_at is None or flow.metadata.get("wardgate.outcome"):
            return
        flow.metadata["wardgate.outcome"] = True
        now = time.perf_counter()
        message = (flow.error.msg if flow.error else "").lower()
        if "client disconnected" in message:
            code, status = "client_disconnected", None
        elif message == CONNECT_TIMED_OUT.lower():
            code, status = "upstream_connect_timeout", 504
        elif "timeout" in message or "timed out" in message:
            code, status = "upstream_timeout", 504
        else:
            code, status = "upstream_error", 502
        self._audit.record_later(
            call.record(
                flow,
                "outcome",
                status=status,
                error=code,
                latency_upstream_ms=(now - call.forwarded_at) * 1000,
                latency_total_ms=(now - call.started) * 1000,
            )
        )
