"""ProxyAuth: who is calling. Verifies the token on CONNECT and on every plain request.

The identity presented on CONNECT binds the client connection; requests inside the tunnel carry
no proxy credential, so each one is re-checked against the bound identity (expiry, agent status).
``Proxy-Authorization`` is removed before anything is forwarded.
"""

from __future__ import annotations

from mitmproxy import connection, http

from wardgate.gateway.audit import AuditWriter
from wardgate.gateway.errors import IdentityError
from wardgate.gateway.identity import Principal, TokenVerifier, token_from_proxy_authorization

from .call import call_of
from .refusals import refuse

PROXY_HEADERS = ("proxy-authorization", "proxy-connection")


class ProxyAuth:
    def __init__(self, verifier: TokenVerifier, audit: AuditWriter, audit_timeout: float) -> None:
        self._verifier = verifier
        self._audit = audit
        self._audit_timeout = audit_timeout
        self._bound: dict[str, Principal] = {}

    async def _authenticate(self, flow: http.HTTPFlow) -> Principal | None:
        header = flow.request.headers.get("proxy-authorization")
        for name in PROXY_HEADERS:
            flow.request.headers.pop(name, None)
        try:
            token = token_from_proxy_authorization(header)
            return await self._verifier.verify(token)
        except IdentityError as error:
            await refuse(flow, error, self._audit, self._audit_timeout)
            return None

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        principal = await self._authenticate(flow)
        if principal is not None:
            call_of(flow).principal = principal
            self._bound[flow.client_conn.id] = principal

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        call = call_of(flow)
        bound = self._bound.get(flow.client_conn.id)
        if bound is None:
            call.principal = await self._authenticate(flow)
            return
        for name in PROXY_HEADERS:
            flow.request.headers.pop(name, None)
        call.principal = bound
        try:
            await self._verifier.check_live(bound)
        except IdentityError as error:
            await refuse(flow, error, self._audit, self._audit_timeout)
            call.principal = None

    def client_disconnected(self, client: connection.Client) -> None:
        self._bound.pop(client.id, None)
