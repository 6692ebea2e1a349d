"""EventStreams: Server-Sent Events are relayed as they arrive instead of being buffered.

mitmproxy buffers whole responses unless ``flow.response.stream`` is set, which would hold an
endless ``text/event-stream`` forever (mitmproxy issue 4469). Streaming it also lets a
revocation cut a live stream by closing its connection (ProxyAuth).

Addons that must see or rewrite a stream (scrubbing, MCP filtering) append a chunk filter
``bytes -> bytes`` to ``flow.metadata[STREAM_FILTERS]`` in ``responseheaders`` before this addon
runs; each chunk passes through them in order, and ``b""`` marks the end of the stream. The
first and last 64 KiB that went out are kept in ``flow.metadata[STREAM_SAMPLE]`` for the outcome
record (LLM usage is reported in the first and last events of a stream), and the number of bytes
that went out in ``flow.metadata[STREAM_BYTES]``. Addons that run after this one in
``responseheaders`` (the credential scrubber) call ``flow.response.stream.prepend``. Large
responses are relayed through the same :class:`Relay` (proxy/large_responses.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mitmproxy import http

STREAM_FILTERS = "wardgate.stream_filters"
# Set (True) by an addon that must see a finite stream whole before it goes out (MCP tools/list).
STREAM_BUFFERED = "wardgate.stream_buffered"
STREAM_SAMPLE = "wardgate.stream_sample"
STREAM_BYTES = "wardgate.stream_bytes"
SAMPLE_BYTES = 64 * 1024

ChunkFilter = Callable[[bytes], "bytes | list[bytes]"]


def _joined(out: bytes | list[bytes]) -> bytes:
    return out if isinstance(out, bytes) else b"".join(out)


class Relay:
    """``flow.response.stream``: runs the chunk filters, keeps the sample and counts what went out.

    ``idle_bound``: the upstream must keep sending (UpstreamTimeout cuts a relay that got no bytes for
    ``limits.upstream_timeout``); event streams may stay quiet as long as the upstream likes."""

    def __init__(self, flow: http.HTTPFlow, filters: list[ChunkFilter], *, idle_bound: bool = False) -> None:
        self._flow = flow
        self._filters = filters
        self._head = bytearray()
        self._tail = bytearray()
        self._skipped = False
        self._sent = 0
        self.idle_bound = idle_bound
        self.last_data = time.monotonic()  # when the upstream last sent something

    def prepend(self, apply: ChunkFilter) -> None:
        """Run ``apply`` first on every chunk (used by addons that act after EventStreams)."""
        self._filters.insert(0, apply)

    def __call__(self, chunk: bytes) -> list[bytes]:
        """Chunks to send; never an empty one, which chunked framing would read as the end."""
        out = chunk
        if chunk:
            self.last_data = time.monotonic()
            for apply in self._filters:
                out = _joined(apply(out)) if out else b""
        else:  # end of stream: each filter gets what the previous one flushed, then the end mark
            for apply in self._filters:
                out = (_joined(apply(out)) if out else b"") + _joined(apply(b""))
        self._keep(out)
        self._sent += len(out)
        if not chunk:
            gap = b"\n\n" if self._skipped else b""
            self._flow.metadata[STREAM_SAMPLE] = bytes(self._head) + gap + bytes(self._tail)
            self._flow.metadata[STREAM_BYTES] = self._sent
        return [out] if out else []

    def _keep(self, data: bytes) -> None:
        room = SAMPLE_BYTES - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if data:
            self._tail += data
            if len(self._tail) > SAMPLE_BYTES:
                self._skipped = True
                del self._tail[: len(self._tail) - SAMPLE_BYTES]


class EventStreams:
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if flow.metadata.get(STREAM_BUFFERED):
            return
        if response is not None and response.headers.get("content-type", "").startswith("text/event-stream"):
            response.stream = Relay(flow, list(flow.metadata.get(STREAM_FILTERS, [])))
