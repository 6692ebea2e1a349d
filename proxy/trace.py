"""TraceContext: W3C trace context (``traceparent``) passed through to the upstream and recorded.

A valid ``traceparent`` from the agent goes upstream unchanged and its trace id lands on every
audit record of the call. A missing or malformed one is replaced by a fresh one (W3C Trace Context
§ 4.2: a participant that cannot use the incoming header restarts the trace), so upstream logs and
the audit log always share a trace id. Runs first, so refusals carry the trace id too.
"""

from __future__ import annotations

import os
import re

from mitmproxy import http

TRACE_KEY = "wardgate.trace_id"
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


def trace_id_of(header: str | None) -> str | None:
    """The trace id of a valid ``traceparent`` value, else None (all-zero ids and version ff are invalid)."""
    match = _TRACEPARENT.match((header or "").strip())
    if not match:
        return None
    version, trace_id, parent_id, _, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or set(trace_id) == {"0"} or set(parent_id) == {"0"}:
        return None
    return trace_id


class TraceContext:
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        headers = flow.request.headers
        values = headers.get_all("traceparent")
        trace_id = trace_id_of(values[0]) if len(values) == 1 else None
        if trace_id is None:
            trace_id = os.urandom(16).hex()
            headers["traceparent"] = f"00-{trace_id}-{os.urandom(8).hex()}-01"
            headers.pop("tracestate", None)  # belongs to the trace we could not continue
        flow.metadata[TRACE_KEY] = trace_id
