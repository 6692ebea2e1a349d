"""Agent identity: minting and verifying the signed token an agent presents to the proxy.

Token profile (DESIGN.md): header ``typ: at+jwt``, ``alg`` EdDSA or ES256, ``kid``; claims
``iss``, single-valued ``aud``, ``sub`` (the user), ``act.sub`` (the agent, RFC 8693 delegation),
``tenant``, ``scope``, ``jti``, ``iat``, ``exp`` and optional ``run``.

Verification never trusts the token about how to verify it: the algorithm must be on the
allow-list *and* match the type of the key found by ``kid`` in keys held locally; header-supplied
key material (``jwk``, ``jku``, ``x5u``, ``x5c``) is refused outright.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

from .agents import Agent, AgentDirectory
from .errors import IdentityError
from .issuers import ExternalIssuer, IssuerKey
from .keys import KeyRing, algorithm_for
from .revocations import RevocationView
from .settings import IdentitySettings

TOKEN_TYPE = "at+jwt"
ALLOWED_ALGORITHMS = frozenset({"EdDSA", "ES256"})
_FORBIDDEN_HEADERS = ("jwk", "jku", "x5u", "x5c", "crit")
_REQUIRED_CLAIMS = ["iss", "aud", "sub", "exp", "iat", "jti"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an agent acting for a user within a tenant, proven by one token."""

    agent: str
    user: str
    tenant: str
    scopes: tuple[str, ...]
    token_id: str
    issuer: str
    issued_at: float
    expires_at: float
    run: str | None = None
    key_id: str | None = None

    def as_policy_identity(self) -> dict[str, object]:
        return {
            "agent": self.agent,
            "user": self.user,
            "tenant": self.tenant,
            "scopes": list(self.scopes),
            "token_id": self.token_id,
            "issuer": self.issuer,
            "run": self.run,
        }


class TokenIssuer:
    def __init__(self, keys: KeyRing, settings: IdentitySettings) -> None:
        self._keys = keys
        self._settings = settings

    def mint(
        self,
        *,
        agent: str,
        tenant: str,
        user: str,
        scopes: tuple[str, ...],
        ttl: float | None = None,
        run: str | None = None,
        now: float | None = None,
    ) -> str:
        ttl = self._settings.default_ttl if ttl is None else ttl
        if ttl <= 0 or ttl > self._settings.max_ttl:
            raise IdentityError(
                f"ttl must be between 1s and the cap of {int(self._settings.max_ttl)}s",
                code="token_ttl_invalid",
            )
        issued = int(time.time() if now is None else now)
        claims: dict[str, object] = {
            "iss": self._settings.issuer,
            "aud": self._settings.audience,
            "sub": user,
            "act": {"sub": agent},
            "tenant": tenant,
            "scope": " ".join(scopes),
            "jti": str(uuid.uuid4()),
            "iat": issued,
            "exp": issued + int(ttl),
        }
        if run:
            claims["run"] = run
        signing = self._keys.signing
        return jwt.encode(
            claims,
            signing.private_key,
            algorithm=signing.algorithm,
            headers={"kid": signing.kid, "typ": TOKEN_TYPE},
        )


def _invalid(message: str, code: str = "identity_invalid") -> IdentityError:
    return IdentityError(message, code=code)


def _decode(
    token: str, key: object, alg: str, audience: str, issuer: str, leeway: float, required: list[str]
) -> dict[str, Any]:
    """Signature, exact ``aud`` and ``iss``, times with bounded leeway; each failure its own code."""
    try:
        return jwt.decode(
            token,
            key,  # type: ignore[arg-type]
            algorithms=[alg],
            audience=audience,
            issuer=issuer,
            leeway=leeway,
            options={"require": required, "verify_iat": True},
        )
    except jwt.ExpiredSignatureError:
        raise _invalid("token has expired", "identity_expired") from None
    except jwt.InvalidAudienceError:
        raise _invalid("token is meant for another audience", "identity_wrong_audience") from None
    except jwt.InvalidIssuerError:
        raise _invalid("token comes from an untrusted issuer", "identity_wrong_issuer") from None
    except jwt.ImmatureSignatureError:
        raise _invalid("token is not valid yet", "identity_not_yet_valid") from None
    except jwt.MissingRequiredClaimError:
        raise _invalid("token lacks a required claim", "identity_claims_invalid") from None
    except jwt.InvalidSignatureError:
        raise _invalid("token signature is invalid") from None
    except jwt.DecodeError:
        raise _invalid("token is not a well-formed JWT", "identity_malformed") from None
    except jwt.PyJWTError:
        raise _invalid("token signature or claims are invalid") from None


@dataclass(frozen=True, slots=True)
class _HeldKey:
    """The external issuer's key that verified a cached token."""

    issuer: ExternalIssuer
    kid: str
    key: IssuerKey

    def held(self) -> bool:
        return self.issuer.current(self.kid) is self.key


class TokenVerifier:
    """Token → :class:`Principal`, or :class:`IdentityError` with a stable code."""

    # A token naming a kid we do not hold re-reads the key folder at most this often
    # (a `keys rotate` by another process), so junk kids cannot turn into disk reads.
    KEY_RELOAD_INTERVAL = 1.0

    def __init__(
        self,
        keys: KeyRing,
        settings: IdentitySettings,
        agents: AgentDirectory,
        revocations: RevocationView | None = None,
        issuers: list[ExternalIssuer] | None = None,
        cache_size: int = 4096,
    ) -> None:
        self._keys = keys
        self._settings = settings
        self._agents = agents
        self._revocations = revocations
        self._issuers = {issuer.settings.issuer: issuer for issuer in issuers or []}
        self._keys_loaded_at = time.monotonic()
        # Verified tokens → Principal. Only the signature and claim checks are cached; expiry,
        # revocation and the agent's standing are checked on every request (check_live). An
        # external issuer's token also keeps the key that verified it: it is used from the cache
        # only while that issuer's current key set (within its max_age) still holds that key.
        self._cache: dict[str, tuple[Principal, _HeldKey | None]] = {}
        self._cache_size = cache_size
        self.verifications = 0  # tokens checked in full (signature and claims), not found in the cache

    async def verify(self, token: str) -> Principal:
        principal = self._cached(token)
        if principal is None:
            cached = await self._verify_uncached(token)
            if self._cache_size:
                if len(self._cache) >= self._cache_size:
                    self._cache.pop(next(iter(self._cache)))  # oldest first
                self._cache[token] = cached
            principal = cached[0]
        await self.check_live(principal)
        return principal

    def _cached(self, token: str) -> Principal | None:
        """The principal verified for ``token`` before, while what verified it still holds."""
        cached = self._cache.get(token)
        if cached is not None and cached[1] is not None and not cached[1].held():
            del self._cache[token]  # the issuer's keys changed or aged out: verify it again
            return None
        return cached[0] if cached is not None else None

    def verify_now(self, token: str) -> Principal | None:
        """``verify`` without waiting, for a token verified before whose agent is in the registry
        snapshot: its principal, or the error ``verify`` would raise. None when only ``verify`` can
        tell (a token not in the cache, an external issuer's key set to look at again, an agent
        to read from the registry): then await that."""
        principal = self._cached(token)
        return principal if principal is not None and self.check_live_now(principal) else None

    async def _verify_uncached(self, token: str) -> tuple[Principal, _HeldKey | None]:
        self.verifications += 1
        header = self._header(token)
        external = self._external_issuer(token) if self._issuers else None
        if external is not None:
            return await self._verify_external(token, header, external)
        try:
            return self._verify_own(token, header), None
        except IdentityError as error:
            if error.code != "identity_unknown_key" or not await self._reload_keys():
                raise
            return self._verify_own(token, header), None

    async def _reload_keys(self) -> bool:
        if self._keys.folder is None or time.monotonic() - self._keys_loaded_at < self.KEY_RELOAD_INTERVAL:
            return False
        self._keys_loaded_at = time.monotonic()
        try:
            await asyncio.to_thread(self._keys.reload)
        except Exception:  # noqa: BLE001 - keep the ring we have; the token stays refused
            return False
        return True

    def verify_signature(self, token: str, now: float | None = None) -> Principal:
        """Own-issuer tokens only, without the cache (benchmarks, tests)."""
        return self._verify_own(token, self._header(token))

    def _header(self, token: str) -> dict[str, object]:
        if len(token) > self._settings.max_token_bytes:
            raise _invalid("token is larger than the configured maximum", "identity_token_too_large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("token is not a well-formed JWT", "identity_malformed") from None
        return header

    @staticmethod
    def _refuse_key_material(header: dict[str, object]) -> None:
        if any(name in header for name in _FORBIDDEN_HEADERS):
            raise _invalid("token header carries key material or critical extensions", "identity_header_refused")

    def _external_issuer(self, token: str) -> ExternalIssuer | None:
        """Which trusted external issuer the (not yet verified) ``iss`` names, if any."""
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            raise _invalid("token is not a well-formed JWT", "identity_malformed") from None
        if issuer == self._settings.issuer or not isinstance(issuer, str):
            return None
        return self._issuers.get(issuer)

    def _verify_own(self, token: str, header: dict[str, object]) -> Principal:
        settings = self._settings
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise _invalid("token algorithm is not allowed", "identity_algorithm_refused")
        if header.get("typ") != TOKEN_TYPE:
            raise _invalid("token type must be at+jwt", "identity_wrong_type")
        self._refuse_key_material(header)
        kid = header.get("kid")
        key = self._keys.public.get(kid) if isinstance(kid, str) else None
        if key is None or not isinstance(kid, str):
            raise _invalid("token is signed by an unknown key", "identity_unknown_key")
        if algorithm_for(key) != alg:
            raise _invalid("token algorithm does not match its key", "identity_algorithm_refused")
        claims = _decode(token, key, str(alg), settings.audience, settings.issuer, settings.leeway, _REQUIRED_CLAIMS)
        return self._principal(claims, kid)

    async def _verify_external(self, token: str, header: dict[str, object],
                               issuer: ExternalIssuer) -> tuple[Principal, _HeldKey]:
        trusted = issuer.settings
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in trusted.algorithms:
            raise _invalid("token algorithm is not allowed for its issuer", "identity_algorithm_refused")
        typ = header.get("typ", "")
        if typ not in trusted.token_types:
            raise _invalid("token type is not accepted for its issuer", "identity_wrong_type")
        self._refuse_key_material(header)
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise _invalid("token is signed by an unknown key", "identity_unknown_key")
        key = await issuer.key(kid)
        if not key.fits(alg):
            raise _invalid("token algorithm does not match its key", "identity_algorithm_refused")
        claims = _decode(token, key.key, alg, trusted.audience, trusted.issuer, self._settings.leeway,
                         ["iss", "aud", "exp", "iat"])
        if not isinstance(claims["aud"], str):
            raise _invalid("token must name exactly one audience", "identity_claims_invalid")
        issued, expires = claims["iat"], claims["exp"]
        if not isinstance(issued, (int, float)) or not isinstance(expires, (int, float)):
            raise _invalid("token times must be numbers", "identity_claims_invalid")
        if expires - issued > self._settings.max_ttl:
            raise _invalid("token lifetime exceeds the configured cap", "identity_ttl_exceeded")
        run = claims.get("run")
        principal = Principal(
            **issuer.identity(claims, token),
            issuer=trusted.issuer,
            issued_at=float(issued),
            expires_at=float(expires),
            run=run if isinstance(run, str) else None,
            key_id=f"{trusted.issuer}#{kid}",
        )
        return principal, _HeldKey(issuer, kid, key)

    def _principal(self, claims: dict[str, object], kid: str) -> Principal:
        settings = self._settings
        act = claims.get("act")
        agent = act.get("sub") if isinstance(act, dict) else None
        tenant, user, scope, jti = claims.get("tenant"), claims.get("sub"), claims.get("scope", ""), claims.get("jti")
        run = claims.get("run")
        texts = (agent, tenant, user, scope, jti)
        if not all(isinstance(v, str) for v in texts) or not (agent and tenant and user and jti):
            raise _invalid("token lacks the agent, user, tenant or id claims", "identity_claims_invalid")
        if not isinstance(claims["aud"], str):
            raise _invalid("token must name exactly one audience", "identity_claims_invalid")
        if run is not None and not isinstance(run, str):
            raise _invalid("token run claim must be a string", "identity_claims_invalid")
        issued, expires = claims["iat"], claims["exp"]
        if not isinstance(issued, (int, float)) or not isinstance(expires, (int, float)):
            raise _invalid("token times must be numbers", "identity_claims_invalid")
        if expires - issued > settings.max_ttl:
            raise _invalid("token lifetime exceeds the configured cap", "identity_ttl_exceeded")
        return Principal(
            agent=agent,
            user=user,
            tenant=tenant,
            scopes=tuple(s for s in scope.split(" ") if s),
            token_id=jti,
            issuer=str(claims["iss"]),
            issued_at=float(issued),
            expires_at=float(expires),
            run=run,
            key_id=kid,
        )

    async def check_live(self, principal: Principal, now: float | None = None) -> None:
        """Re-checked on every request: expiry, revocation and the agent's standing in the registry."""
        if self.check_live_now(principal, now):
            return
        self._standing(principal, await self._agents.lookup(principal.agent))

    def check_live_now(self, principal: Principal, now: float | None = None) -> bool:
        """``check_live`` without waiting: True once every check passed (raising as it does), False
        when the agent is not in the registry snapshot (then await ``check_live``, which reads it)."""
        now = time.time() if now is None else now
        if now > principal.expires_at + self._settings.leeway:
            raise _invalid("token has expired", "identity_expired")
        if self._revocations is not None:
            self._revocations.check(principal)
        agent = self._agents.get(principal.agent)
        if agent is None:
            return False
        self._standing(principal, agent)
        return True

    @staticmethod
    def _standing(principal: Principal, agent: Agent | None) -> None:
        if agent is None:
            raise _invalid("token names an agent that is not registered", "identity_unknown_agent")
        if agent.tenant != principal.tenant:
            raise _invalid("token tenant does not match the agent's tenant", "identity_claims_invalid")
        if agent.status != "active":
            raise _invalid(f"agent is {agent.status}", "identity_revoked")


def token_from_proxy_authorization(value: str | None) -> str:
    """Extract the token from ``Bearer <jwt>`` or ``Basic base64(<any user>:<jwt>)``."""
    if not value:
        raise IdentityError("proxy credentials are required", code="identity_missing")
    scheme, _, credentials = value.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        return credentials
    if scheme.lower() == "basic" and credentials:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise IdentityError("Basic proxy credentials are not valid base64", code="identity_malformed") from None
        _, sep, password = decoded.partition(":")
        if sep and password:
            return password
    raise IdentityError("use Proxy-Authorization: Bearer <token> or Basic with the token as password", code="identity_malformed")
