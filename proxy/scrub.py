"""Scrubbing: an injected secret that an upstream echoes back never reaches the agent.

For a call that carried a credential, the response headers and body are searched for the
secret's forms (plain, base64 of Basic credentials and of the token, URL- and JSON-escaped) and
each occurrence is replaced by ``[wardgate:scrubbed]``; the count goes into the outcome audit
record (``scrub_count``). Two addons, because the body is seen in two ways:

- ``StreamScrubber`` (``responseheaders``, last in the chain, after EventStreams has asked for
  streaming): scrubs the headers and decides how the body is inspected. A response that is to be
  streamed — an event stream, a body announced larger than the service's ``inspection_limit``, or
  a body of unknown length once more than that has arrived (proxy/large_responses.py) — is
  scrubbed in flight: decoded (gzip, deflate, br, zstd) and searched chunk by chunk, holding
  back the last ``len(longest form) - 1`` bytes so a secret split across chunks is still found;
  it goes out chunked and decoded. Everything else is buffered; so is every body of a
  ``sensitive`` service but its event streams.
- ``ResponseScrubber`` (``response``, before Idempotency and AuditTrail, so neither a stored
  replay nor the outcome record sees an unscrubbed body or a stale count): scrubs a buffered body
  after decoding it (chunked bodies arrive reassembled).

A response that cannot be inspected safely is refused with 502 ``response_uninspectable`` rather
than passed through: a content-encoding wardgate cannot decode (buffered first, then refused), or,
for a service marked ``sensitive``, a body larger than its ``inspection_limit``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from mitmproxy import http

from wardgate.gateway.audit_writer import AuditLog
from wardgate.gateway.bindings import Binding
from wardgate.gateway.credentials import Injected
from wardgate.gateway.errors import UpstreamError

from .call import Call, call_of
from .decoding import decoded, incremental
from .event_streams import Relay
from .inject import BINDING, INJECTED
from .large_responses import BUFFER_CAP, announced_size, relay_past
from .refusals import refuse

REPLACEMENT = b"[wardgate:scrubbed]"
# A buffered body of a service that is not sensitive may inflate to this many times its
# inspection_limit (256 MiB by default) to be scrubbed; past that it is refused
# (decoded_size_exceeded) rather than inflated: a few KB can decode to gigabytes (proxy/decoding.py).
DECODED_FACTOR = 64


def uninspectable(reason: str) -> UpstreamError:
    return UpstreamError(
        "the upstream response could not be inspected for leaked credentials", code="response_uninspectable",
        reasons=[reason],
    )


class StreamingScrub:
    """``flow.response.stream`` callable: decode, scrub, hold back a possible partial match."""

    def __init__(self, injected: Injected, decode: Callable[[bytes], bytes], call: Call) -> None:
        self._injected = injected
        self._hold = max(0, len(injected.forms[0]) - 1)
        self._decode = decode
        self._call = call
        self._carry = b""

    def __call__(self, chunk: bytes) -> list[bytes]:
        """Chunks to send; never an empty one, which chunked framing would read as the end."""
        end = chunk == b""  # mitmproxy signals the end of the body with an empty chunk
        try:
            data = self._carry + self._decode(chunk)
        except ValueError:  # proxy/decoding.py: does not decode, or inflates past its bound
            # Headers are gone already; ending the connection is the only refusal left.
            raise ValueError("the streamed response could not be decoded for scrubbing") from None
        if end:
            self._carry = b""
            cleaned, count = self._injected.scrub(data, REPLACEMENT)
            self._call.scrub_count += count
            return [cleaned] if cleaned else []
        cut = len(data) - self._hold
        out, position = [], 0
        first = self._injected.first_at(data)  # nothing matches before it; most chunks have none
        matches = self._injected.pattern.finditer(data, first) if first >= 0 else ()
        for match in matches:
            # A match near the end might be the start of a longer form: keep it for the next chunk.
            if match.end() > cut or match.start() > len(data) - self._hold - 1:
                cut = min(cut, match.start())
                break
            out += [data[position:match.start()], REPLACEMENT]
            self._call.scrub_count += 1
            position = match.end()
        cut = max(cut, position)
        out.append(data[position:cut])
        self._carry = data[cut:]
        ready = b"".join(out)
        return [ready] if ready else []


class StreamScrubber:
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        injected: Injected | None = flow.metadata.get(INJECTED)
        binding: Binding | None = flow.metadata.get(BINDING)
        response = flow.response
        if injected is None or binding is None or response is None or flow.metadata.get("wardgate.refused"):
            return
        call = call_of(flow)
        # One search over all header values joined: a form in any value is found there (a match
        # across two values only costs the field-by-field pass). Most responses have none.
        if injected.first_at(b"\n".join(value for _, value in response.headers.fields)) >= 0:
            fields, count = [], 0
            for name, value in response.headers.fields:
                cleaned, found = injected.scrub(value, REPLACEMENT)
                count += found
                fields.append((name, cleaned))
            response.headers.fields = tuple(fields)
            call.scrub_count += count
        if response.raw_content is not None:
            return  # the body is whole already (set at the gateway, proxy/exchange.py): ResponseScrubber
        service = binding.service
        size = announced_size(flow)
        over_limit = size is not None and size > service.inspection_limit
        if over_limit and service.sensitive:
            response.stream = False  # refused once more than the limit has arrived (large_responses)
            flow.metadata[BUFFER_CAP] = service.inspection_limit
            return
        if isinstance(response.stream, Relay):  # an event stream relayed by EventStreams: scrub first
            scrub = self._scrubbing(flow, injected, call)
            if scrub is not None:
                response.stream.prepend(scrub)
            return
        if size == 0:
            return
        if service.sensitive:
            response.stream = False  # buffered whole, refused as soon as it outgrows the limit
            flow.metadata[BUFFER_CAP] = service.inspection_limit
            return
        start = partial(self._relay, injected, call)
        if response.stream:  # never relayed unscrubbed, whoever asked for streaming
            response.stream = start(flow) or False
        else:
            relay_past(flow, size, service.inspection_limit, start)

    @staticmethod
    def _relay(injected: Injected, call: Call, flow: http.HTTPFlow) -> Relay | None:
        scrub = StreamScrubber._scrubbing(flow, injected, call)
        return None if scrub is None else Relay(flow, [scrub], idle_bound=True)

    @staticmethod
    def _scrubbing(flow: http.HTTPFlow, injected: Injected, call: Call) -> StreamingScrub | None:
        """The body scrubbed in flight, decoded: None (buffered, then refused) for an unknown encoding."""
        response = flow.response
        assert response is not None
        decode = incremental(response.headers.get("content-encoding", ""))
        if decode is None:
            response.stream = False
            return None
        for name in ("content-length", "content-encoding"):
            response.headers.pop(name, None)
        response.headers["transfer-encoding"] = "chunked"
        return StreamingScrub(injected, decode, call)


class ResponseScrubber:
    def __init__(self, audit: AuditLog, audit_timeout: float) -> None:
        self._audit = audit
        self._audit_timeout = audit_timeout

    def response(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """Sync; hands back a coroutine only to refuse an answer it cannot inspect (proxy/inline_hooks.py)."""
        injected: Injected | None = flow.metadata.get(INJECTED)
        binding: Binding | None = flow.metadata.get(BINDING)
        response = flow.response
        if injected is None or binding is None or response is None or flow.metadata.get("wardgate.refused"):
            return None
        if response.stream or response.raw_content is None:
            return None  # scrubbed in flight by StreamScrubber
        limit, sensitive = binding.service.inspection_limit, binding.service.sensitive
        if sensitive and len(response.raw_content) > limit:
            return refuse(flow, uninspectable("inspection_limit_exceeded"), self._audit, self._audit_timeout)
        cap = limit if sensitive else limit * DECODED_FACTOR
        try:
            body = decoded(response.raw_content, response.headers.get("content-encoding"), cap)
        except ValueError:
            return refuse(flow, uninspectable("unknown_content_encoding"), self._audit, self._audit_timeout)
        if len(body) > cap:
            reason = "inspection_limit_exceeded" if sensitive else "decoded_size_exceeded"
            return refuse(flow, uninspectable(reason), self._audit, self._audit_timeout)
        cleaned, count = injected.scrub(body, REPLACEMENT)
        if count:
            response.set_content(cleaned)
            call_of(flow).scrub_count += count
        return None
