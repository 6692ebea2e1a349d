"""Benchmark-only stage switches (``[bench] unsafe_skip_stages``): makes the cost of each stage visible.

The default chain is untouched: with the list empty (the default) ``apply`` returns the chain as
given. Each named stage is replaced by the least that keeps the rest of the chain working:

- ``identity``  the token's claims are read without checking signature, expiry or revocation
- ``policy``    every identified call is allowed without asking OPA
- ``injection`` no credential is bound or injected
- ``audit``     nothing is recorded (no intent, no outcome); calls are forwarded at once
- ``scrubbing`` responses and WebSocket messages are not searched for injected secrets
"""

from __future__ import annotations

import base64
import logging
import time

import jwt
from mitmproxy import http

from wardgate.gateway.identity import Principal
from wardgate.gateway.policy import Decision

from .audit_trail import AuditTrail
from .auth import ProxyAuth, drop_proxy_headers
from .call import call_of
from .egress import EgressPolicy
from .inject import CredentialBinding, CredentialInjector
from .intent import IntentRecord
from .scrub import ResponseScrubber, StreamScrubber
from .websocket_scrub import WebSocketScrubber

log = logging.getLogger("wardgate.proxy")
_ALLOW = Decision(allow=True, reasons=["unsafe_skip_policy"])


class UnverifiedIdentity:
    """``identity`` skipped: the principal is taken from the token's claims as they stand.

    Decoded claims are remembered per header value (as the real stage's verified-token cache does),
    so that the "− identity" row measures what the identity stage costs, not a JWT decode."""

    def __init__(self) -> None:
        self._bound: dict[str, Principal] = {}
        self._read: dict[str, Principal | None] = {}

    def _principal(self, flow: http.HTTPFlow) -> Principal | None:
        header = flow.request.headers.get("proxy-authorization", "")
        drop_proxy_headers(flow)
        if header in self._read:
            return self._read[header]
        if len(self._read) >= 1024:
            self._read.clear()
        principal = self._read[header] = self._claims(header)
        return principal

    @staticmethod
    def _claims(header: str) -> Principal | None:
        try:
            token = base64.b64decode(header.split(" ", 1)[1]).decode().split(":", 1)[1]
            claims = jwt.decode(token, options={"verify_signature": False})
            return Principal(
                agent=claims["act"]["sub"], user=claims["sub"], tenant=claims["tenant"], scopes=(),
                token_id=claims["jti"], issuer=claims["iss"], issued_at=claims["iat"], expires_at=claims["exp"],
            )
        except Exception:  # noqa: BLE001 - a bench switch: no principal, the call is not allowed
            return None

    def http_connect(self, flow: http.HTTPFlow) -> None:
        principal = self._principal(flow)
        call_of(flow).principal = principal
        if principal is not None:
            self._bound[flow.client_conn.id] = principal

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        bound = self._bound.get(flow.client_conn.id)
        call_of(flow).principal = bound if bound is not None else self._principal(flow)
        if call_of(flow).principal is None:
            flow.response = http.Response.make(407, b"unsafe_skip identity: no readable token")


class AllowWithoutPolicy:
    """``policy`` skipped: identified calls are allowed."""

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        call = call_of(flow)
        if flow.response is None and call.principal is not None:
            call.decision = _ALLOW


class ForwardUnrecorded:
    """``audit`` skipped: an allowed call is forwarded with no intent record."""

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        call = call_of(flow)
        if flow.response is None and call.decision is not None and call.decision.allow:
            call.forwarded_at = time.perf_counter()


def apply(skipped: list[str], chain: list[object]) -> list[object]:
    """``chain`` with the ``skipped`` stages replaced or removed (see the module docstring)."""
    if not skipped:
        return chain
    for stage in skipped:
        log.warning("UNSAFE: bench.unsafe_skip_stages skips %r: for benchmarks only", stage)
    replace: dict[type, object | None] = {}
    if "identity" in skipped:
        replace[ProxyAuth] = UnverifiedIdentity()
    if "policy" in skipped:
        replace[EgressPolicy] = AllowWithoutPolicy()
    if "injection" in skipped:
        replace[CredentialBinding] = replace[CredentialInjector] = None
    if "audit" in skipped:
        replace[IntentRecord], replace[AuditTrail] = ForwardUnrecorded(), None
    if "scrubbing" in skipped:
        replace[ResponseScrubber] = replace[StreamScrubber] = replace[WebSocketScrubber] = None
    result = []
    for addon in chain:
        substitute = replace.get(type(addon), addon)
        if substitute is not None:
            result.append(substitute)
    return result
