"""``wardgate creds connect``: the OAuth 2.0 authorization-code flow with PKCE (RFC 7636, S256).

The gateway holds the pending flows, so the admin API can serve the redirect back:

1. the CLI asks ``POST /v1/oauth/connect`` (admin credential) with tenant, user and service;
   the gateway makes a ``state`` and a PKCE verifier, keeps them in memory for ``PENDING_TTL``,
   and answers the authorization URL (carrying only the S256 challenge);
2. the user opens it and approves; the authorization server redirects to ``/oauth/callback``
   (public: the unguessable ``state`` is the credential, used once);
3. the gateway exchanges the code with the verifier at the token endpoint and stores the grant
   (access and refresh token, expiry, endpoint, client) in the vault;
4. the CLI polls ``GET /v1/oauth/connect/{state}`` until the flow is ``connected`` or ``failed``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from .agents import check_name
from .errors import BadRequest, NotFound, WardgateError
from .oauth import TokenEndpointError, grant_from_answer, token_request
from .settings import Settings
from .vault import Vault

PENDING_TTL = 600.0
CALLBACK_PATH = "/oauth/callback"


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(64)[:96]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


@dataclass
class Pending:
    tenant: str
    user: str
    service: str
    verifier: str
    redirect_uri: str
    created: float
    status: str = "pending"  # pending | connected | failed
    reason: str | None = None

    def __repr__(self) -> str:
        return f"Pending({self.tenant}/{self.user}/{self.service}, {self.status})"


class OAuthConnector:
    def __init__(self, settings: Settings, vault: Vault | None, ssl_context: ssl.SSLContext, timeout: float = 10.0) -> None:
        self._settings = settings
        self._vault = vault
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._pending: dict[str, Pending] = {}

    def _expire(self) -> None:
        now = time.monotonic()
        for state in [s for s, p in self._pending.items() if now - p.created > PENDING_TTL]:
            del self._pending[state]

    def start(self, tenant: str, user: str, service: str, default_redirect: str) -> tuple[str, str]:
        check_name("tenant", tenant)
        if not user or len(user) > 256:
            raise BadRequest("user must be 1-256 characters", code="invalid_user")
        config = self._settings.services.get(service)
        if config is None or config.oauth is None:
            raise BadRequest(f"service {service!r} has no OAuth authorization server configured", code="oauth_not_configured")
        if self._vault is None:
            raise BadRequest("the credential vault is not configured", code="vault_unavailable")
        self._expire()
        state = secrets.token_urlsafe(32)
        verifier, challenge = pkce_pair()
        redirect = config.oauth.redirect_uri or default_redirect
        self._pending[state] = Pending(tenant, user, service, verifier, redirect, time.monotonic())
        query = {
            "response_type": "code", "client_id": config.oauth.client_id, "redirect_uri": redirect, "state": state,
            "code_challenge": challenge, "code_challenge_method": "S256",
        }
        if config.oauth.scopes:
            query["scope"] = " ".join(config.oauth.scopes)
        separator = "&" if "?" in config.oauth.authorization_endpoint else "?"
        return state, f"{config.oauth.authorization_endpoint}{separator}{urlencode(query)}"

    def status(self, state: str) -> Pending:
        self._expire()
        pending = self._pending.get(state)
        if pending is None:
            raise NotFound("no such connect flow (expired or unknown)", code="oauth_flow_unknown")
        return pending

    async def finish(self, state: str, code: str | None, error: str | None) -> Pending:
        self._expire()
        pending = self._pending.get(state)
        if pending is None or pending.status != "pending":
            raise BadRequest("unknown, expired or already used OAuth state", code="oauth_state_invalid")
        pending.status = "exchanging"
        try:
            if error or not code:
                raise TokenEndpointError(error if error and error.isidentifier() else "authorization_denied")
            oauth = self._settings.services[pending.service].oauth
            assert oauth is not None and self._vault is not None
            form = {"grant_type": "authorization_code", "code": code, "redirect_uri": pending.redirect_uri,
                    "code_verifier": pending.verifier}
            secret = oauth.client_secret.get_secret_value() if oauth.client_secret else None
            async with aiohttp.ClientSession(timeout=self._timeout) as session:
                answer = await token_request(session, self._ssl, oauth.token_endpoint, form,
                                             client_id=oauth.client_id, client_secret=secret)
            grant = grant_from_answer(
                {"token_endpoint": oauth.token_endpoint, "client_id": oauth.client_id,
                 **({"client_secret": secret} if secret else {})},
                answer,
            )
            await asyncio.to_thread(
                self._vault.put, pending.tenant, pending.user, pending.service, "oauth",
                json.dumps(grant, separators=(",", ":")).encode(),
            )
        except TokenEndpointError as failure:
            pending.status, pending.reason = "failed", failure.reason
        except WardgateError as failure:
            pending.status, pending.reason = "failed", failure.code
        else:
            pending.status = "connected"
        pending.verifier = ""
        return pending


CONNECTOR = web.AppKey("oauth_connector", OAuthConnector)


async def start_flow(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("body must be JSON") from None
    if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in ("tenant", "user", "service")):
        raise BadRequest("body needs string fields tenant, user and service")
    default_redirect = f"{request.scheme}://{request.host}{CALLBACK_PATH}"
    state, url = request.app[CONNECTOR].start(body["tenant"], body["user"], body["service"], default_redirect)
    return web.json_response({"state": state, "authorization_url": url, "expires_in": int(PENDING_TTL)}, status=201)


async def flow_status(request: web.Request) -> web.Response:
    pending = request.app[CONNECTOR].status(request.match_info["state"])
    return web.json_response({"status": pending.status, "reason": pending.reason, "tenant": pending.tenant,
                              "user": pending.user, "service": pending.service})


async def callback(request: web.Request) -> web.Response:
    state = request.query.get("state", "")
    pending = await request.app[CONNECTOR].finish(state, request.query.get("code"), request.query.get("error"))
    if pending.status == "connected":
        text = f"wardgate: {pending.service} is connected for {pending.user}. You can close this window.\n"
        return web.Response(text=text, headers={"Cache-Control": "no-store"})
    return web.Response(status=400, text=f"wardgate: connecting {pending.service} failed ({pending.reason}).\n",
                        headers={"Cache-Control": "no-store", "X-Wardgate-Error": "oauth_connect_failed"})


def add_routes(app: web.Application, connector: OAuthConnector) -> None:
    """``/v1/...`` routes sit behind the admin credential; the callback is public (state-bound)."""
    app[CONNECTOR] = connector
    app.router.add_post("/v1/oauth/connect", start_flow)
    app.router.add_get("/v1/oauth/connect/{state}", flow_status)
    app.router.add_get(CALLBACK_PATH, callback)


_ADMIN = [{"admin": []}]
OPENAPI_PATHS = {
    "/v1/oauth/connect": {"post": {"security": _ADMIN, "summary": "Start an OAuth authorization-code flow (PKCE)",
                                   "responses": {"201": {"description": "state and authorization_url"},
                                                 "400": {"description": "service has no OAuth server"}}}},
    "/v1/oauth/connect/{state}": {"get": {"security": _ADMIN, "summary": "A connect flow's status",
                                          "responses": {"200": {"description": "pending, connected or failed"},
                                                        "404": {"description": "unknown or expired"}}}},
    CALLBACK_PATH: {"get": {"summary": "Redirect target of the authorization server (state-bound, single use)",
                            "responses": {"200": {"description": "connected"}, "400": {"description": "failed"}}}},
}
