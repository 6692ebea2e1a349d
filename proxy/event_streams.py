"""EventStreams: Server-Sent Events are relayed as they arrive instead of being buffered.

mitmproxy buffers whole responses unless ``flow.response.stream`` is set, which would hold an
endless ``text/event-stream`` forever (mitmproxy issue 4469). Streaming it also lets a
revocation cut a live stream by closing its connection (ProxyAuth).
"""

from __future__ import annotations

from mitmproxy import http


class EventStreams:
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if response is not None and response.headers.get("content-type", "").startswith("text/event-stream"):
            response.stream = True
