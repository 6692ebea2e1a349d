"""The verified-token cache: a token is checked in full once, and an external issuer's token only
for as long as that issuer's current key set still holds the key that verified it."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from wardgate.gateway.agents import AgentDirectory, AgentRegistry
from wardgate.gateway.errors import WardgateError
from wardgate.gateway.identity import TokenIssuer, TokenVerifier
from wardgate.gateway.issuers import ExternalIssuer
from wardgate.gateway.keys import KeyRing
from wardgate.gateway.settings import IdentitySettings, TrustedIssuer

ISSUER = "https://spire.example.test"
MAX_AGE = 0.5


def jwk_of(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, object]:
    return {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key())), "kid": kid, "use": "sig"}


class Parts:
    def __init__(self, folder: Path) -> None:
        self.keys = KeyRing.load(folder / "keys")
        self.registry = AgentRegistry(folder / "state.db")
        self.registry.create("bot", "acme", ["read"])
        self.directory = AgentDirectory(self.registry)
        self.svid_key = ec.generate_private_key(ec.SECP256R1())
        self.jwks = folder / "jwks.json"
        self.publish([jwk_of(self.svid_key, "svid-1")])
        self.issuer = ExternalIssuer(TrustedIssuer(
            issuer=ISSUER, jwks=str(self.jwks), audience="wardgate", algorithms=["ES256"], token_types=["", "JWT"],
            agent_claim="sub", agent_prefix="spiffe://example.org/agent/", user_claim="sub", tenant="acme",
            refetch_min_interval=0, max_age=MAX_AGE,
        ))
        self.verifier = TokenVerifier(self.keys, IdentitySettings(), self.directory, issuers=[self.issuer])

    def publish(self, keys: list[dict[str, object]]) -> None:
        self.jwks.write_text(json.dumps({"keys": keys}))

    def svid(self) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": "wardgate", "sub": "spiffe://example.org/agent/bot", "iat": now, "exp": now + 300}
        return jwt.encode(claims, self.svid_key, algorithm="ES256", headers={"kid": "svid-1"})


@pytest.fixture
def parts(tmp_path: Path):  # noqa: ANN201
    found = Parts(tmp_path)
    asyncio.run(found.directory.refresh())
    yield found
    found.registry.close()


def test_a_token_is_checked_in_full_once_own_and_external(parts: Parts) -> None:
    own = TokenIssuer(parts.keys, IdentitySettings()).mint(agent="bot", tenant="acme", user="alice", scopes=(), ttl=60)
    external = parts.svid()

    async def run() -> None:
        for token in (own, external, own, external, own, external):
            principal = await parts.verifier.verify(token)
            assert (principal.agent, principal.tenant) == ("bot", "acme")

    asyncio.run(run())
    assert parts.verifier.verifications == 2


def test_a_cached_external_token_is_refused_once_its_key_leaves_the_issuers_set(parts: Parts) -> None:
    token = parts.svid()

    async def run() -> str:
        await parts.verifier.verify(token)
        parts.publish([jwk_of(ec.generate_private_key(ec.SECP256R1()), "svid-2")])  # the issuer rotated svid-1 out
        assert await parts.issuer.refresh()
        with pytest.raises(WardgateError) as refused:
            await parts.verifier.verify(token)
        return refused.value.code

    assert asyncio.run(run()) == "identity_unknown_key"


def test_a_cached_external_token_is_refused_once_the_issuers_keys_are_too_old(parts: Parts) -> None:
    token = parts.svid()

    async def run() -> str:
        await parts.verifier.verify(token)
        parts.jwks.unlink()  # no fresh key set can be had any more
        await asyncio.sleep(MAX_AGE + 0.1)
        with pytest.raises(WardgateError) as refused:
            await parts.verifier.verify(token)
        return refused.value.code

    assert asyncio.run(run()) == "issuer_keys_unavailable"
