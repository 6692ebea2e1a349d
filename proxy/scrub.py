"""ResponseScrubber: an injected secret that an upstream echoes back never reaches the agent.

For a call that carried a credential, every response header and the decoded body (gzip, deflate,
br, zstd; chunked bodies arrive reassembled, so a secret split across chunks is found too) are
searched for the secret's forms (plain, base64 of Basic credentials and of the token, URL- and
JSON-escaped) and each occurrence is replaced by ``[wardgate:scrubbed]``. The count goes into the
outcome audit record (``scrub_count``).

A response that cannot be inspected safely is refused with 502 ``response_uninspectable``
rather than passed through: a content-encoding wardgate cannot decode, or, for a service marked
``sensitive``, a body larger than its ``inspection_limit``. For other services a body announced
larger than the limit is streamed with its headers scrubbed but its body unread.
"""

from __future__ import annotations

import re

from mitmproxy import http

from wardgate.gateway.audit import AuditWriter
from wardgate.gateway.bindings import Binding
from wardgate.gateway.credentials import Injected
from wardgate.gateway.errors import UpstreamError

from .call import call_of
from .inject import BINDING, INJECTED
from .refusals import refuse

REPLACEMENT = b"[wardgate:scrubbed]"


def _pattern(injected: Injected) -> re.Pattern[bytes]:
    return re.compile(b"|".join(re.escape(form) for form in injected.forms))


def scrub_bytes(pattern: re.Pattern[bytes], data: bytes) -> tuple[bytes, int]:
    return pattern.subn(REPLACEMENT, data)


def _uninspectable(reason: str) -> UpstreamError:
    return UpstreamError(
        "the upstream response could not be inspected for leaked credentials", code="response_uninspectable",
        reasons=[reason],
    )


class ResponseScrubber:
    def __init__(self, audit: AuditWriter, audit_timeout: float) -> None:
        self._audit = audit
        self._audit_timeout = audit_timeout

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        injected: Injected | None = flow.metadata.get(INJECTED)
        binding: Binding | None = flow.metadata.get(BINDING)
        if injected is None or binding is None or flow.response is None or flow.metadata.get("wardgate.refused"):
            return
        pattern = _pattern(injected)
        count = 0
        fields = []
        for name, value in flow.response.headers.fields:
            cleaned, found = scrub_bytes(pattern, value)
            count += found
            fields.append((name, cleaned))
        if count:
            flow.response.headers.fields = tuple(fields)
        call_of(flow).scrub_count += count
        length = flow.response.headers.get("content-length", "")
        announced = int(length) if length.isdigit() else None
        if announced is not None and announced > binding.service.inspection_limit and not binding.service.sensitive:
            flow.response.stream = True

    async def response(self, flow: http.HTTPFlow) -> None:
        injected: Injected | None = flow.metadata.get(INJECTED)
        binding: Binding | None = flow.metadata.get(BINDING)
        response = flow.response
        if injected is None or binding is None or response is None or flow.metadata.get("wardgate.refused"):
            return
        if response.stream or response.raw_content is None:
            return
        if len(response.raw_content) > binding.service.inspection_limit and binding.service.sensitive:
            await refuse(flow, _uninspectable("inspection_limit_exceeded"), self._audit, self._audit_timeout)
            return
        try:
            body = response.get_content(strict=True)
        except ValueError:
            await refuse(flow, _uninspectable("unknown_content_encoding"), self._audit, self._audit_timeout)
            return
        if body is None:
            return
        if len(body) > binding.service.inspection_limit and binding.service.sensitive:
            await refuse(flow, _uninspectable("inspection_limit_exceeded"), self._audit, self._audit_timeout)
            return
        cleaned, count = scrub_bytes(_pattern(injected), body)
        if count:
            response.set_content(cleaned)
            call_of(flow).scrub_count += count
