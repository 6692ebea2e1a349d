"""The destination the policy judges is the destination dialled.

DestinationCheck (``requestheaders``, after ProxyAuth, before EgressPolicy): the request must name
one destination — absolute-form target and Host header for plain requests; CONNECT authority, TLS
SNI and Host header inside a tunnel — or it is refused with 400 ``destination_mismatch``.

DestinationPin (``requestheaders``, after EgressPolicy, so names the policy denies are never even
looked up in DNS): resolves the destination (a name's addresses are reused for ``[egress]
resolve_cache``) and checks every address on every call (``gateway/destinations.py``); in
``server_connect`` it replaces the connection's address with the vetted IP, keeping the name for
SNI and the Host header, so DNS cannot change the answer between check and connect. Non-HTTP
traffic inside a tunnel is closed.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any

from mitmproxy import connection, http, tcp
from mitmproxy.proxy import server_hooks

from wardgate.gateway.audit_writer import AuditLog
from wardgate.gateway.destinations import DestinationGuard, Vetted, parse_ip_literal
from wardgate.gateway.errors import BadRequest, WardgateError

from .call import call_of
from .refusals import refuse

log = logging.getLogger("wardgate.proxy")


def _same_host(a: str, b: str) -> bool:
    a, b = a.strip("[]").rstrip(".").lower(), b.strip("[]").rstrip(".").lower()
    if a == b:
        return True
    left, right = parse_ip_literal(a), parse_ip_literal(b)
    return left is not None and left == right


def _authority(value: str, default_port: int) -> tuple[str, int] | None:
    host, sep, port = value.rpartition(":")
    if sep and port.isdigit() and (not host.startswith("[") or host.endswith("]")):
        return host, int(port)
    if value.startswith("[") and not value.endswith("]"):
        return None
    return value, default_port


class DestinationCheck:
    def __init__(self, audit: AuditLog, audit_timeout: float) -> None:
        self._audit = audit
        self._audit_timeout = audit_timeout
        self._tunnels: dict[str, tuple[str, int]] = {}

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is None:
            self._tunnels[flow.client_conn.id] = (flow.request.host, flow.request.port)

    def _agreement(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        host_header = request.host_header
        default_port = 443 if request.scheme == "https" else 80
        if host_header is not None:
            parsed = _authority(host_header, default_port)
            if parsed is None or not _same_host(parsed[0], request.host) or parsed[1] != request.port:
                raise BadRequest("the Host header names another destination than the request target",
                                 code="destination_mismatch", reasons=["host_header"])
        tunnel = self._tunnels.get(flow.client_conn.id)
        if tunnel is not None:
            if not _same_host(tunnel[0], request.host) or tunnel[1] != request.port:
                raise BadRequest("the request names another destination than its CONNECT",
                                 code="destination_mismatch", reasons=["connect_authority"])
            sni = flow.client_conn.sni
            if sni and not _same_host(sni, tunnel[0]):
                raise BadRequest("the TLS server name differs from the CONNECT destination",
                                 code="destination_mismatch", reasons=["sni"])

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        if flow.response is not None or call_of(flow).principal is None:
            return None
        try:
            self._agreement(flow)
        except WardgateError as error:
            return refuse(flow, error, self._audit, self._audit_timeout)
        return None

    def client_disconnected(self, client: connection.Client) -> None:
        self._tunnels.pop(client.id, None)


class DestinationPin:
    def __init__(self, guard: DestinationGuard, audit: AuditLog, audit_timeout: float) -> None:
        self._guard = guard
        self._audit = audit
        self._audit_timeout = audit_timeout
        # client connection id → {(host, port): vetted address}
        self._vetted: dict[str, dict[tuple[str, int], str]] = {}
        self._names: dict[str, tuple[str, int]] = {}  # server connection id → the name it was pinned for

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        if not call_of(flow).decide_on_body:
            return self._pin(flow)
        return None

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        if call_of(flow).decide_on_body:  # MCP: decided once the body was read
            return self._pin(flow)
        return None

    def _pin(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """Done here and now for an IP literal or a name resolved recently; a coroutine to wait
        for while the name resolves (proxy/inline_hooks.py)."""
        call = call_of(flow)
        if flow.response is not None or not call.proceeds:
            return None
        try:
            vetted = self._guard.vet_now(flow.request.host, flow.request.port)
        except WardgateError as error:
            return refuse(flow, error, self._audit, self._audit_timeout)
        if vetted is None:
            return self._pin_resolved(flow)
        self._keep(flow, vetted)
        return None

    async def _pin_resolved(self, flow: http.HTTPFlow) -> None:
        try:
            vetted = await self._guard.vet(flow.request.host, flow.request.port)
        except WardgateError as error:
            await refuse(flow, error, self._audit, self._audit_timeout)
            return
        self._keep(flow, vetted)

    def _keep(self, flow: http.HTTPFlow, vetted: Vetted) -> None:
        self._vetted.setdefault(flow.client_conn.id, {})[(flow.request.host, flow.request.port)] = vetted.address

    def pinned(self, flow: http.HTTPFlow) -> str | None:
        """The vetted address of this request's destination, for a gateway that dials it itself
        (proxy/exchange.py); None when it was never vetted."""
        return self._vetted.get(flow.client_conn.id, {}).get((flow.request.host, flow.request.port))

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        address = data.server.address
        if address is None:
            data.server.error = "no destination"
            return
        host, port = address[0], address[1]
        pinned = self._vetted.get(data.client.id, {}).get((host, port))
        if pinned is None:
            # Every allowed request was vetted first; anything else is not ours to dial.
            data.server.error = "destination was not vetted"
            return
        if data.server.sni is None and parse_ip_literal(host) is None:
            data.server.sni = host
        data.server.address = (pinned, port)
        self._names[data.server.id] = (host, port)

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        # Dialled: give the connection its name back. mitmproxy reuses a kept-alive server connection
        # only for a request naming the same address; with the IP left in place every request in a
        # tunnel to a name opened a new connection, and the sixth waited forever on mitmproxy's limit
        # of five connections per address (found by `make soak`).
        name = self._names.pop(data.server.id, None)
        if name is not None:
            # Server.__setattr__ refuses to change the address of an open connection (to stop an addon
            # from pretending it is connected elsewhere); here it is the very name it was dialled for.
            object.__setattr__(data.server, "address", name)

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._names.pop(data.server.id, None)

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        log.warning("closing non-HTTP traffic in a tunnel from %s", flow.client_conn.peername)
        flow.kill()

    def client_disconnected(self, client: connection.Client) -> None:
        self._vetted.pop(client.id, None)
