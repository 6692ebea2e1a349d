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
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        auth = None
        if grant.get("client_secret"):
            auth = aiohttp.BasicAuth(str(grant.get("client_id", "")), str(grant["client_secret"]))
        elif grant.get("client_id"):
            form["client_id"] = str(grant["client_id"])
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        self.refreshes += 1
        try:
            async with self._session.post(
                endpoint, data=form, auth=auth, ssl=self._ssl, allow_redirects=False,
                headers={"Accept": "application/json"},
            ) as response:
                status = response.status
                body = await response.read()
        except TimeoutError:
            raise refresh_failed(service, "token_endpoint_timeout") from None
        except (aiohttp.ClientError, OSError):
            raise refresh_failed(service, "token_endpoint_unreachable") from None
        try:
            answer = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            answer = None
        if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("access_token"), str):
            error = answer.get("error") if isinstance(answer, dict) else None
            # OAuth error codes are fixed ASCII words; anything else is not repeated.
            reason = error if isinstance(error, str) and _ERROR_CODE.match(error) else f"token_endpoint_status_{status}"
            raise refresh_failed(service, reason)
        updated = dict(grant)
        updated["access_token"] = answer["access_token"]
        if isinstance(answer.get("refresh_token"), str) and answer["refresh_token"]:
            updated["refresh_token"] = answer["refresh_token"]  # rotated: the old one is now spent
        expires_in = answer.get("expires_in")
        if isinstance(expires_in, (int, float)) and expires_in > 0:
            updated["expires_at"] = time.time() + float(expires_in)
        else:
            updated.pop("expires_at", None)
        return updated
