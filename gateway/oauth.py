"""OAuth 2.0 grants in the vault: access tokens refreshed before they expire, one refresh at a time.

A grant is stored as a JSON ``oauth`` credential: ``access_token``, ``refresh_token``,
``expires_at`` (unix seconds), ``token_endpoint`` (https), ``client_id``, ``client_secret``.

At most one refresh per tenant/user/service is in flight in this process: concurrent calls wait
on the same lock and then re-read the vault, so they all use the token the first one obtained.
A rotated refresh token is persisted before any call uses the new access token. A refresh that
fails (endpoint unreachable, slow, or refusing the grant) raises ``credential_refresh_failed``:
the call is not forwarded without its credential.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import ssl
import time
from typing import Any

import aiohttp

from .errors import UpstreamError
from .vault import Credential, Vault

_ERROR_CODE = re.compile(r"^[a-z0-9_]{1,64}$")


def refresh_failed(service: str, reason: str) -> UpstreamError:
    return UpstreamError(
        f"the OAuth access token for service {service!r} could not be refreshed",
        code="credential_refresh_failed",
        reasons=[reason],
    )


def _grant(credential: Credential) -> dict[str, Any]:
    try:
        grant = json.loads(credential.secret.reveal())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise refresh_failed(credential.service, "grant_unreadable") from None
    if not isinstance(grant, dict) or not isinstance(grant.get("access_token"), str):
        raise refresh_failed(credential.service, "grant_unreadable")
    return grant


def _fresh(grant: dict[str, Any], skew: float, now: float) -> bool:
    expires = grant.get("expires_at")
    return not isinstance(expires, (int, float)) or expires - skew > now


class TokenEndpointError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def token_request(
    session: aiohttp.ClientSession, ssl_context: ssl.SSLContext, endpoint: str, form: dict[str, str], *,
    client_id: object, client_secret: object,
) -> dict[str, Any]:
    """POST a token request (RFC 6749 §3.2); the answer must carry an access token.

    Confidential clients authenticate with HTTP Basic (client_secret_basic); public clients send
    their ``client_id`` in the form. Failures raise :class:`TokenEndpointError` with a reason that
    is safe to show: the endpoint's OAuth error code if it is a plain word, else a fixed string.
    """
    auth = None
    form = dict(form)
    if client_secret:
        auth = aiohttp.BasicAuth(str(client_id or ""), str(client_secret))
    elif client_id:
        form["client_id"] = str(client_id)
    try:
        async with session.post(
            endpoint, data=form, auth=auth, ssl=ssl_context, allow_redirects=False, headers={"Accept": "application/json"},
        ) as response:
            status = response.status
            body = await response.read()
    except TimeoutError:
        raise TokenEndpointError("token_endpoint_timeout") from None
    except (aiohttp.ClientError, OSError):
        raise TokenEndpointError("token_endpoint_unreachable") from None
    try:
        answer = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        answer = None
    if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("access_token"), str):
        error = answer.get("error") if isinstance(answer, dict) else None
        # OAuth error codes are fixed ASCII words; anything else is not repeated.
        raise TokenEndpointError(error if isinstance(error, str) and _ERROR_CODE.match(error) else f"token_endpoint_status_{status}")
    return answer


def grant_from_answer(grant: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """``grant`` updated with a token endpoint's answer (a rotated refresh token replaces the old)."""
    updated = dict(grant)
    updated["access_token"] = answer["access_token"]
    if isinstance(answer.get("refresh_token"), str) and answer["refresh_token"]:
        updated["refresh_token"] = answer["refresh_token"]
    expires_in = answer.get("expires_in")
    if isinstance(expires_in, (int, float)) and expires_in > 0:
        updated["expires_at"] = time.time() + float(expires_in)
    else:
        updated.pop("expires_at", None)
    return updated


class OAuthRefresher:
    def __init__(self, vault: Vault, ssl_context: ssl.SSLContext, timeout: float = 10.0) -> None:
        self._vault = vault
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        # A refresh that just failed is not retried by every call queued behind it.
        self._failed: dict[tuple[str, str, str], tuple[float, str, bytes]] = {}
        self.retry_after = 5.0
        self._session: aiohttp.ClientSession | None = None
        self.refreshes = 0

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def access_token(self, credential: Credential, skew: float) -> str:
        grant = _grant(credential)
        if _fresh(grant, skew, time.time()):
            return grant["access_token"]
        key = (credential.tenant, credential.user, credential.service)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            # Another call may have refreshed while this one waited: read again before refreshing.
            current = await asyncio.to_thread(self._vault.get, *key)
            if current is None:
                raise refresh_failed(credential.service, "grant_deleted")
            grant = _grant(current)
            if _fresh(grant, skew, time.time()):
                return grant["access_token"]
            # Same grant as a refresh that failed moments ago: answer as that one did. A newly
            # stored grant (another refresh token) is tried at once.
            tried = hashlib.sha256(str(grant.get("refresh_token")).encode()).digest()
            failed = self._failed.get(key)
            if failed is not None and failed[2] == tried and time.monotonic() - failed[0] < self.retry_after:
                raise refresh_failed(credential.service, failed[1])
            try:
                grant = await self._refresh(credential.service, grant)
            except UpstreamError as error:
                self._failed[key] = (time.monotonic(), error.reasons[0] if error.reasons else "refresh_failed", tried)
                raise
            self._failed.pop(key, None)
            await asyncio.to_thread(
                self._vault.put, *key, "oauth", json.dumps(grant, separators=(",", ":")).encode()
            )
            return grant["access_token"]

    async def _refresh(self, service: str, grant: dict[str, Any]) -> dict[str, Any]:
        endpoint, refresh_token = grant.get("token_endpoint"), grant.get("refresh_token")
        if not refresh_token:
            raise refresh_failed(service, "no_refresh_token")
        if not isinstance(endpoint, str) or not endpoint.startswith("https://"):
            raise refresh_failed(service, "token_endpoint_not_https")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        self.refreshes += 1
        try:
            answer = await token_request(
                self._session, self._ssl, endpoint, {"grant_type": "refresh_token", "refresh_token": refresh_token},
                client_id=grant.get("client_id"), client_secret=grant.get("client_secret"),
            )
        except TokenEndpointError as error:
            raise refresh_failed(service, error.reason) from None
        return grant_from_answer(grant, answer)
