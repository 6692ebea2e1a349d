"""External issuers: OIDC providers and SPIFFE JWT-SVID issuers trusted by issuer + JWKS.

Each :class:`ExternalIssuer` holds the issuer's key set in memory:

- fetched at start and then every ``refresh_interval`` (a file is read, a URL fetched with a timeout
  and a size cap);
- a token naming a ``kid`` the set lacks triggers at most one refetch per ``refetch_min_interval``,
  so a stream of junk kids costs the provider nothing;
- a failed fetch keeps the last good set, up to ``max_age`` after it was fetched; past that every
  token of the issuer is refused with 503 ``issuer_keys_unavailable`` (fail closed);
- symmetric keys (``kty: oct``) are never loaded, and a token's ``alg`` must be on the issuer's
  allow-list *and* fit the key it names (family and, if the JWK states one, its ``alg``).

Claims are mapped to the agent, user and tenant by dotted paths (see ``TrustedIssuer``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt

from .errors import ConfigError, DependencyUnavailable, IdentityError
from .settings import TrustedIssuer

log = logging.getLogger("wardgate.issuers")
MAX_JWKS_BYTES = 256 * 1024

_FAMILY = {"OKP": ("EdDSA",), "EC": ("ES256", "ES384"), "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")}
_CURVE_ALG = {"P-256": "ES256", "P-384": "ES384"}


class IssuerKey:
    def __init__(self, jwk: dict[str, Any]) -> None:
        self.kty = jwk.get("kty")
        self.declared_alg = jwk.get("alg")
        self.crv = jwk.get("crv")
        self.key = jwt.PyJWK.from_dict(jwk).key

    def fits(self, alg: str) -> bool:
        if alg not in _FAMILY.get(str(self.kty), ()):
            return False
        if self.kty == "EC" and _CURVE_ALG.get(str(self.crv)) != alg:
            return False
        return self.declared_alg in (None, alg)


def parse_jwks(document: bytes) -> dict[str, IssuerKey]:
    """kid → key for every usable signing key; anything else in the set is skipped."""
    data = json.loads(document)
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWK set")
    keys: dict[str, IssuerKey] = {}
    for jwk in data["keys"]:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
            continue
        if jwk.get("kty") not in _FAMILY or jwk.get("use", "sig") != "sig":
            continue  # never HMAC (oct), never encryption keys
        try:
            keys[jwk["kid"]] = IssuerKey(jwk)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            continue
    return keys


def claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


class ExternalIssuer:
    def __init__(self, settings: TrustedIssuer, session: aiohttp.ClientSession | None = None) -> None:
        self.settings = settings
        self._session = session
        self._keys: dict[str, IssuerKey] = {}
        self._fetched_at: float | None = None  # monotonic time of the last good fetch
        self._last_attempt = float("-inf")
        self._lock = asyncio.Lock()
        self.fetches = 0
        url = urlsplit(settings.jwks)
        self._is_url = url.scheme in ("http", "https")
        if url.scheme == "http" and not settings.unsafe_allow_http:
            raise ConfigError(f"JWKS for {settings.issuer} must be https (or set unsafe_allow_http)")

    async def _read(self) -> bytes:
        if not self._is_url:
            return await asyncio.to_thread(Path(self.settings.jwks).read_bytes)
        assert self._session is not None, "a URL JWKS needs an HTTP session"
        timeout = aiohttp.ClientTimeout(total=self.settings.fetch_timeout)
        async with self._session.get(self.settings.jwks, timeout=timeout, allow_redirects=False) as response:
            if response.status != 200:
                raise OSError(f"JWKS answered {response.status}")
            body = await response.content.read(MAX_JWKS_BYTES + 1)
            if len(body) > MAX_JWKS_BYTES:
                raise OSError("JWKS larger than the cap")
            return body

    async def refresh(self) -> bool:
        """Fetch the key set; on failure keep the last good one. Returns whether it succeeded."""
        async with self._lock:
            self._last_attempt = time.monotonic()
            self.fetches += 1
            try:
                keys = parse_jwks(await asyncio.wait_for(self._read(), self.settings.fetch_timeout))
            except (OSError, ValueError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("JWKS of %s not refreshed: %s", self.settings.issuer, type(exc).__name__)
                return False
            self._keys, self._fetched_at = keys, time.monotonic()
            return True

    async def key(self, kid: str) -> IssuerKey:
        if self._fetched_at is None or time.monotonic() - self._fetched_at > self.settings.max_age:
            if time.monotonic() - self._last_attempt >= self.settings.refetch_min_interval:
                await self.refresh()
            if self._fetched_at is None or time.monotonic() - self._fetched_at > self.settings.max_age:
                raise DependencyUnavailable(
                    "the token issuer's keys could not be refreshed within their maximum age",
                    code="issuer_keys_unavailable",
                )
        found = self._keys.get(kid)
        if found is None and time.monotonic() - self._last_attempt >= self.settings.refetch_min_interval:
            await self.refresh()
            found = self._keys.get(kid)
        if found is None:
            raise IdentityError("token is signed by an unknown key", code="identity_unknown_key")
        return found

    def current(self, kid: str) -> IssuerKey | None:
        """The key ``kid`` names in the key set held now, if that set is within its maximum age.

        The verified-token cache (gateway/identity.py) keeps an external token only while this
        still answers the key that verified it."""
        if self._fetched_at is None or time.monotonic() - self._fetched_at > self.settings.max_age:
            return None
        return self._keys.get(kid)

    async def run(self) -> None:
        """Scheduled refresh; after a failure, retry at the refetch interval instead."""
        while True:
            ok = await self.refresh()
            delay = self.settings.refresh_interval if ok else self.settings.refetch_min_interval
            await asyncio.sleep(delay)

    def identity(self, claims: dict[str, Any], token: str) -> dict[str, Any]:
        """Mapped fields for a Principal, or ``identity_claims_invalid``."""
        s = self.settings
        agent = claim(claims, s.agent_claim)
        if not isinstance(agent, str) or not agent.startswith(s.agent_prefix) or agent == s.agent_prefix:
            raise IdentityError("token does not name an agent this issuer may speak for", code="identity_claims_invalid")
        user = claim(claims, s.user_claim)
        tenant = claim(claims, s.tenant_claim) if s.tenant_claim else s.tenant
        scope = claim(claims, s.scope_claim)
        scopes = scope.split() if isinstance(scope, str) else scope if isinstance(scope, list) else []
        jti = claims.get("jti")
        if not isinstance(user, str) or not user or not isinstance(tenant, str) or not tenant:
            raise IdentityError("token lacks the user or tenant claims", code="identity_claims_invalid")
        if not all(isinstance(x, str) for x in scopes):
            raise IdentityError("token scopes must be strings", code="identity_claims_invalid")
        return {
            "agent": agent[len(s.agent_prefix):],
            "user": user,
            "tenant": tenant,
            "scopes": tuple(scopes),
            # Tokens without an id (JWT-SVIDs) can still be revoked one by one, by this digest.
            "token_id": jti if isinstance(jti, str) and jti else "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:32],
        }
