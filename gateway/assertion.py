"""Signed assertions for internal services that trust wardgate rather than a stored secret.

Per call wardgate mints a short-lived JWT with its own signing key (the one published at
``/.well-known/jwks.json``): ``aud`` = the service, ``sub`` = the user, ``act.sub`` = the agent
(RFC 8693 delegation), ``tenant``, optional ``run``, ``jti`` = the call's audit id, and a lifetime
of seconds. The header ``typ`` is ``wardgate-assertion+jwt``, so an assertion can never pass as an
agent identity token (``at+jwt``, audience the proxy) and vice versa.
"""

from __future__ import annotations

import time

import jwt

from .keys import KeyRing

ASSERTION_TYPE = "wardgate-assertion+jwt"


class AssertionMinter:
    def __init__(self, keys: KeyRing, issuer: str) -> None:
        self._keys = keys
        self._issuer = issuer

    def mint(
        self, *, audience: str, user: str, agent: str, tenant: str, run: str | None, call_id: str, ttl: float,
        now: float | None = None,
    ) -> str:
        issued = int(time.time() if now is None else now)
        claims: dict[str, object] = {
            "iss": self._issuer,
            "aud": audience,
            "sub": user,
            "act": {"sub": agent},
            "tenant": tenant,
            "jti": call_id,
            "iat": issued,
            "nbf": issued,
            "exp": issued + max(1, int(ttl)),
        }
        if run:
            claims["run"] = run
        signing = self._keys.signing
        return jwt.encode(
            claims, signing.private_key, algorithm=signing.algorithm, headers={"kid": signing.kid, "typ": ASSERTION_TYPE}
        )
