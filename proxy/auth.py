"""ProxyAuth: who is calling. Verifies the token on CONNECT and on every plain request.

The identity presented on CONNECT binds the client connection; requests inside the tunnel carry
no proxy credential, so each one is re-checked against the bound identity (expiry, revocation,
agent status). ``Proxy-Authorization`` is removed before anything is forwarded.

Live traffic: every client connection is remembered with the identity it last proved. When the
revocation view changes, or on a sweep every ``sweep_interval`` (expiry, agent disabled), a
connection whose identity is no longer live is closed: kept-alive connections, CONNECT tunnels
(even idle ones), WebSockets and streaming responses riding on them all end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from mitmproxy import connection, http

from wardgate.gateway.audit_writer import AuditLog
from wardgate.gateway.errors import IdentityError, WardgateError
from wardgate.gateway.identity import Principal, TokenVerifier, token_from_proxy_authorization
from wardgate.gateway.revocations import Revocation, RevocationView

from .call import call_of
from .refusals import refuse

log = logging.getLogger("wardgate.proxy")
PROXY_HEADERS = ("proxy-authorization", "proxy-connection")


def drop_proxy_headers(flow: http.HTTPFlow) -> None:
    """Proxy credentials and hop-by-hop proxy headers never go upstream."""
    for name in PROXY_HEADERS:
        flow.request.headers.pop(name, None)


class ProxyAuth:
    def __init__(
        self,
        verifier: TokenVerifier,
        audit: AuditLog,
        audit_timeout: float,
        revocations: RevocationView | None = None,
        sweep_interval: float = 1.0,
    ) -> None:
        self._verifier = verifier
        self._audit = audit
        self._audit_timeout = audit_timeout
        self._sweep_interval = sweep_interval
        self._bound: dict[str, Principal] = {}  # CONNECT tunnels: the identity that opened them
        self._live: dict[str, Principal] = {}  # every connection: the identity it last proved
        self._proxyserver: object | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._revocations = revocations
        if revocations is not None:
            revocations.subscribe(self._on_revocations)

    def attach(self, proxyserver: object) -> None:
        """The mitmproxy Proxyserver addon, whose connection handlers can close a client."""
        self._proxyserver = proxyserver

    @staticmethod
    def _token(flow: http.HTTPFlow) -> str:
        """The token in ``Proxy-Authorization`` (or the error saying why there is none); the proxy
        headers are removed before anything is forwarded, whichever it is."""
        header = flow.request.headers.get("proxy-authorization")
        drop_proxy_headers(flow)
        return token_from_proxy_authorization(header)

    async def _authenticate(self, flow: http.HTTPFlow) -> Principal | None:
        try:
            return await self._verifier.verify(self._token(flow))
        except WardgateError as error:  # 407 identity, or 503 revocation_unavailable
            await refuse(flow, error, self._audit, self._audit_timeout)
            return None

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        principal = await self._authenticate(flow)
        if principal is not None:
            call_of(flow).principal = principal
            self._bound[flow.client_conn.id] = principal
            self._live[flow.client_conn.id] = principal

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """Done here and now for a token verified before (or a tunnel's bound identity) whose agent
        is known, as for nearly every call; a coroutine to wait for otherwise (proxy/inline_hooks.py)."""
        call = call_of(flow)
        bound = self._bound.get(flow.client_conn.id)
        if bound is None:
            try:
                token = self._token(flow)
                principal = self._verifier.verify_now(token)
            except WardgateError as error:  # 407 identity, or 503 revocation_unavailable
                return self._refused(flow, error)
            if principal is None:
                return self._verify(flow, token)
            call.principal = self._live[flow.client_conn.id] = principal
            return None
        drop_proxy_headers(flow)
        call.principal = bound
        try:
            if self._verifier.check_live_now(bound):
                return None
        except WardgateError as error:
            return self._refused(flow, error)
        return self._check_bound(flow, bound)

    async def _verify(self, flow: http.HTTPFlow, token: str) -> None:
        try:
            principal = await self._verifier.verify(token)
        except WardgateError as error:
            await self._refused(flow, error)
            return
        call_of(flow).principal = self._live[flow.client_conn.id] = principal

    async def _check_bound(self, flow: http.HTTPFlow, bound: Principal) -> None:
        try:
            await self._verifier.check_live(bound)
        except WardgateError as error:
            await self._refused(flow, error)

    async def _refused(self, flow: http.HTTPFlow, error: WardgateError) -> None:
        """The refusal record names a tunnel's bound identity; the call then has none."""
        await refuse(flow, error, self._audit, self._audit_timeout)
        call_of(flow).principal = None

    def client_disconnected(self, client: connection.Client) -> None:
        self._bound.pop(client.id, None)
        self._live.pop(client.id, None)

    # -- live traffic ---------------------------------------------------------------------

    def running(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="identity-sweep")

    def done(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _close(self, client_id: str, why: str) -> None:
        self._bound.pop(client_id, None)
        self._live.pop(client_id, None)
        handlers = getattr(self._proxyserver, "connections", {})
        handler = handlers.get(client_id)
        if handler is None:
            return
        log.info("closing client connection %s: %s", client_id, why)
        with contextlib.suppress(KeyError, AssertionError):
            handler.close_connection(handler.client)

    def _on_revocations(self, rows: list[Revocation]) -> None:
        assert self._revocations is not None
        for client_id, principal in list(self._live.items()):
            reason = self._revocations.revoked_reason(principal)
            if reason is not None:
                self._close(client_id, reason)

    async def sweep(self) -> None:
        """Close every connection whose identity is no longer live (expired, revoked, disabled)."""
        for client_id, principal in list(self._live.items()):
            try:
                await self._verifier.check_live(principal)
            except IdentityError as error:
                self._close(client_id, error.code)
            except WardgateError:
                # Revocation view stale: requests are refused with 503; keep connections until we know.
                continue

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                await self.sweep()
            except Exception:  # noqa: BLE001 - the sweep must keep running
                log.exception("identity sweep failed")
