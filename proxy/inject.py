"""Credential injection: the user's secret goes out on the wire, the agent never holds it.

Two addons around EgressPolicy:

- ``CredentialBinding`` (after DestinationCheck, before EgressPolicy) decides which service's
  credential this call would carry, so the policy input names it (``credential.service``). It
  binds on the destination the proxy really connects to, and refuses a placeholder marker sent
  anywhere but a destination bound to that service (``credential_placeholder_misplaced``): it is
  never forwarded.
- ``CredentialInjector`` (``request`` hook, last: after IntentRecord, ApprovalGate and Idempotency,
  so only allowed, recorded, approved calls that are not replays) removes whatever the agent sent
  for the service's credential (its header, the configured extra headers and cookies, the query
  parameter) and sets the user's credential once. Lookup failures refuse the call. Running last
  keeps the credential out of approval and idempotency fingerprints (a refreshed token does not
  turn a retry into a different request).

Plain HTTP, another port, another host: no binding, so nothing is injected. Upstream TLS is always
verified by mitmproxy before the request (and its credential) is sent. Redirects are answered to
the agent as they are; mitmproxy never follows them, so a follow-up is a new call, judged and bound
on its own destination.
"""

from __future__ import annotations

import re
from collections.abc import Coroutine
from typing import Any

from mitmproxy import http

from wardgate.gateway.audit_writer import AuditLog
from wardgate.gateway.bindings import Binding, Bindings, marker, markers_in
from wardgate.gateway.credentials import Caller, CredentialProvider, Injected
from wardgate.gateway.errors import BadRequest, WardgateError

from .call import Call, call_of
from .refusals import refuse

BINDING = "wardgate.binding"
INJECTED = "wardgate.injected"


def _decoded(text: str) -> str:
    return text.replace("%3A", ":").replace("%3a", ":")


def _request_markers(request: http.Request) -> tuple[set[str], bool]:
    """Markers in header and query values, and whether one sits in the path itself (never filled in)."""
    # Most calls carry none: look at the raw bytes before decoding anything. A decoded header
    # value or path holds "wardgate" only where the raw bytes do (ASCII decodes to itself).
    if "wardgate" not in request.path and not any(b"wardgate" in raw for _, raw in request.headers.fields):
        return set(), False
    found: set[str] = set()
    for _, value in request.headers.items(multi=True):
        found |= markers_in(value)
    path, _, query = request.path.partition("?")
    found |= markers_in(_decoded(query))
    in_path = markers_in(_decoded(path))
    return found | in_path, bool(in_path)


class CredentialBinding:
    def __init__(self, bindings: Bindings, audit: AuditLog, audit_timeout: float) -> None:
        self._bindings = bindings
        self._audit = audit
        self._audit_timeout = audit_timeout

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        call = call_of(flow)
        if flow.response is not None or call.principal is None:
            return None
        request = flow.request
        # DestinationCheck (before this addon) has refused a Host header, SNI or CONNECT authority
        # naming another destination, so request.host is both what is dialled and what was named.
        destination = request.host.lower().rstrip(".")
        binding = self._bindings.resolve(request.scheme, destination, request.port)
        markers, in_path = _request_markers(request)
        stray = markers - ({binding.name} if binding else set())
        if stray or in_path:
            error = BadRequest(
                "a credential placeholder was sent to a destination not bound to its service",
                code="credential_placeholder_misplaced",
            )
            return refuse(flow, error, self._audit, self._audit_timeout)
        if binding is None or (binding.service.mode == "placeholder" and binding.name not in markers):
            return None
        call.credential_service = binding.name
        flow.metadata[BINDING] = binding
        return None


def _strip_cookies(request: http.Request, names: list[str]) -> None:
    if not names or "cookie" not in request.headers:
        return
    cookies = request.cookies
    for name in names:
        cookies.pop(name, None)
    if not request.cookies:
        request.headers.pop("cookie", None)


def _replace_markers(request: http.Request, name: str, value: str) -> None:
    """Every ``wardgate:NAME`` marker in header values and query values becomes ``value``."""
    text_marker = marker(name)
    raw_marker = text_marker.encode()
    # Most calls carry no marker: look before parsing. Header values are latin-1, byte for byte;
    # query values are percent-decoded, so any escape may spell a marker.
    in_headers = any(raw_marker in raw for _, raw in request.headers.fields)
    _, _, query = request.path.partition("?")
    in_query = text_marker in query or "%" in query
    if not (in_headers or in_query):
        return
    pattern = re.compile(re.escape(text_marker) + r"(?![a-z0-9._-])")
    if in_headers:
        fields = []
        for key, raw in request.headers.fields:
            text = raw.decode("latin-1")
            fields.append((key, pattern.sub(lambda _: value, text).encode("latin-1")))
        request.headers.fields = tuple(fields)
    if in_query:
        items = list(request.query.items(multi=True))
        if any(pattern.search(item) for _, item in items):
            request.query = [(key, pattern.sub(lambda _: value, item)) for key, item in items]


def _apply(request: http.Request, binding: Binding, injected: Injected) -> None:
    service = binding.service
    if service.mode == "inject":
        for name in (*service.strip_headers, *(() if service.mechanism == "query" else (service.header,))):
            request.headers.pop(name, None)
        _strip_cookies(request, service.strip_cookies)
        if service.mechanism == "query":
            assert service.query_param
            request.query[service.query_param] = injected.token
        elif service.mechanism == "basic":
            request.headers["Authorization"] = injected.header_value
        else:
            request.headers[service.header] = injected.header_value
    # A marker on its own bound destination is always filled in, never forwarded as it is.
    _replace_markers(request, binding.name, injected.token)


class CredentialInjector:
    def __init__(self, provider: CredentialProvider, audit: AuditLog, audit_timeout: float) -> None:
        self._provider = provider
        self._audit = audit
        self._audit_timeout = audit_timeout

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """Sync when the credential is already in memory (proxy/inline_hooks.py); else a coroutine."""
        binding: Binding | None = flow.metadata.get(BINDING)
        call = call_of(flow)
        if binding is None or flow.response is not None or call.forwarded_at is None or call.principal is None:
            return None
        principal = call.principal
        caller = Caller(principal.tenant, principal.user, principal.agent, principal.run, call.call_id)
        injected = self._provider.ready(binding, caller)
        if injected is None:
            return self._inject(flow, call, binding, caller)
        _apply(flow.request, binding, injected)
        flow.metadata[INJECTED] = injected
        return None

    async def _inject(self, flow: http.HTTPFlow, call: Call, binding: Binding, caller: Caller) -> None:
        try:
            injected = await self._provider.credential_for(binding, caller)
        except WardgateError as error:
            call.forwarded_at = None
            await refuse(flow, error, self._audit, self._audit_timeout)
            return
        _apply(flow.request, binding, injected)
        flow.metadata[INJECTED] = injected
