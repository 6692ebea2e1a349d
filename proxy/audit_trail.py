"""AuditTrail: the outcome record of every forwarded call, and the audit id on every response.

A WebSocket is one call: its outcome is written when the socket ends (``websocket_end``), not at
the 101, so it says what the whole session did — status 101, bytes of the handshake plus every
message each way, the upstream latency to the 101, the session's total duration, and the scrub
count of the handshake and every message (proxy/websocket_scrub.py). One intent, one outcome per
call still holds. A socket still open when the gateway stops gets its outcome then, with
``error = "gateway_stopped"``; a crash leaves its intent without an outcome, as for any call cut
mid-way (``wardgate audit verify`` warns ``intent_without_outcome``).

mitmproxy keeps every message of a socket on its flow until the socket ends, so a long session
would hold all it ever carried. Each message is counted here as it passes (after the scrubber) and
the ones before it are dropped from the flow, so a socket holds at most its latest message.
"""

from __future__ import annotations

import asyncio
import json
import time

from mitmproxy import http

from wardgate.gateway.audit_writer import AuditLog
from wardgate.gateway.usage import MAX_BODY, extract_usage, may_report_usage

from .call import KEY, Call, call_of
from .decoding import decoded
from .event_streams import STREAM_BYTES, STREAM_SAMPLE
from .large_responses import OVER_CAP
from .upstream_timeout import CONNECT_TIMED_OUT
from .websocket_limits import ended_for_size

OUTCOME_WRITTEN = "wardgate.outcome"
UPGRADED_AT = "wardgate.upgraded_at"  # perf_counter() when the 101 of a WebSocket arrived
MESSAGE_BYTES = "wardgate.websocket_bytes"  # [from the client, from the server] so far


class AuditTrail:
    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit
        self._open_websockets: dict[str, http.HTTPFlow] = {}  # call id → flow, until websocket_end

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if KEY in flow.metadata and flow.response is not None:
            flow.response.headers["X-Wardgate-Audit-Id"] = call_of(flow).call_id

    def response(self, flow: http.HTTPFlow) -> None:
        call = flow.metadata.get(KEY)
        if call is None or flow.metadata.get("wardgate.refused") or call.forwarded_at is None:
            return
        assert flow.response is not None
        now = time.perf_counter()
        if flow.websocket is not None:  # the session follows: its outcome is written when it ends
            flow.metadata[UPGRADED_AT] = now
            self._open_websockets[call.call_id] = flow
            return
        flow.metadata[OUTCOME_WRITTEN] = True  # one outcome per call: no error hook writes another
        # Built once the response is on its way: the agent does not wait for its own outcome record
        # (HTTP, 1 connection: median latency -9.5%, 10 interleaved rounds).
        asyncio.get_running_loop().call_soon(self._outcome, flow, call, now)

    def _outcome(self, flow: http.HTTPFlow, call: Call, now: float) -> None:
        """The outcome of a call answered at ``now``, handed to the audit writer (committed with
        the next batch, or at once when no commit is in flight: gateway/audit_process.py)."""
        assert flow.response is not None
        content_type = flow.response.headers.get("content-type")
        if flow.response.raw_content is not None:
            body = _usage_body(flow.response, content_type)
            sent = len(flow.response.raw_content)
        else:  # relayed as it arrived (proxy/event_streams.py): the head and tail it kept
            body = flow.metadata.get(STREAM_SAMPLE)
            sent = flow.metadata.get(STREAM_BYTES, 0)
        usage = extract_usage(content_type, body)
        self._audit.record_later(
            call.record(
                flow,
                "outcome",
                status=flow.response.status_code,
                bytes_in=len(flow.request.raw_content or b""),
                bytes_out=sent,
                latency_upstream_ms=(now - call.forwarded_at) * 1000,
                latency_total_ms=(now - call.started) * 1000,
                usage=json.dumps(usage, sort_keys=True) if usage else None,
            )
        )

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        websocket = flow.websocket
        if websocket is None or not websocket.messages:
            return
        message = websocket.messages[-1]
        totals = flow.metadata.setdefault(MESSAGE_BYTES, [0, 0])
        totals[0 if message.from_client else 1] += len(message.content)
        del websocket.messages[:-1]  # the latest stays: it is the one being relayed

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        call = flow.metadata.get(KEY)
        if call is not None:
            self._websocket_outcome(flow, call, error="websocket_message_too_big" if ended_for_size(flow) else None)

    def done(self) -> None:
        """Runs before the audit writer stops (proxy/server.py): sockets still open get their outcome."""
        for flow in list(self._open_websockets.values()):
            self._websocket_outcome(flow, call_of(flow), error="gateway_stopped")

    def _websocket_outcome(self, flow: http.HTTPFlow, call: Call, error: str | None) -> None:
        self._open_websockets.pop(call.call_id, None)
        if call.forwarded_at is None or flow.metadata.get(OUTCOME_WRITTEN) or UPGRADED_AT not in flow.metadata:
            return
        flow.metadata[OUTCOME_WRITTEN] = True
        assert flow.response is not None and flow.websocket is not None
        from_client, from_server = flow.metadata.get(MESSAGE_BYTES, (0, 0))
        bytes_in = len(flow.request.raw_content or b"") + from_client
        bytes_out = from_server
        self._audit.record_later(
            call.record(
                flow,
                "outcome",
                status=flow.response.status_code,
                bytes_in=bytes_in,
                bytes_out=bytes_out,
                latency_upstream_ms=(flow.metadata[UPGRADED_AT] - call.forwarded_at) * 1000,
                latency_total_ms=(time.perf_counter() - call.started) * 1000,
                error=error,
            )
        )

    def error(self, flow: http.HTTPFlow) -> None:
        call = flow.metadata.get(KEY)
        if call is None or not call.owes_outcome(flow) or flow.metadata.get(OUTCOME_WRITTEN):
            return
        flow.metadata[OUTCOME_WRITTEN] = True
        now = time.perf_counter()
        message = (flow.error.msg if flow.error else "").lower()
        if "client disconnected" in message:
            code, status = "client_disconnected", None
        elif message == CONNECT_TIMED_OUT.lower():
            code, status = "upstream_connect_timeout", 504
        elif message == OVER_CAP.lower():
            code, status = "response_uninspectable", 502
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
                latency_upstream_ms=(now - call.forwarded_at) * 1000 if call.forwarded_at is not None else None,
                latency_total_ms=(now - call.started) * 1000,
            )
        )


def _usage_body(response: http.Response, content_type: str | None) -> bytes | None:
    """The body usage may be read from: decoded only for the media types that can report it, and
    never inflated past what extract_usage would read (proxy/decoding.py)."""
    assert response.raw_content is not None
    if not may_report_usage(content_type):
        return None
    try:
        return decoded(response.raw_content, response.headers.get("content-encoding"), MAX_BODY)
    except ValueError:
        return None
