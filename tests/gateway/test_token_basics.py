"""Minting and verifying the identity token, and reading it from Proxy-Authorization."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import jwt
import pytest

from wardgate.gateway.agents import AgentDirectory, AgentRegistry
from wardgate.gateway.errors import IdentityError
from wardgate.gateway.identity import TokenIssuer, TokenVerifier, token_from_proxy_authorization
from wardgate.gateway.keys import KeyRing
from wardgate.gateway.settings import IdentitySettings


@pytest.fixture
def parts(tmp_path: Path):  # noqa: ANN201
    keys = KeyRing.load(tmp_path / "keys")
    registry = AgentRegistry(tmp_path / "state.db")
    registry.create("bot", "acme", ["read"])
    settings = IdentitySettings()
    directory = AgentDirectory(registry)
    asyncio.run(directory.refresh())
    yield TokenIssuer(keys, settings), TokenVerifier(keys, settings, directory), registry, keys
    registry.close()


def test_round_trip_carries_the_delegation(parts) -> None:  # noqa: ANN001
    issuer, verifier, _, keys = parts
    token = issuer.mint(agent="bot", tenant="acme", user="alice", scopes=("read",), ttl=60, run="run-1")
    header = jwt.get_unverified_header(token)
    assert (header["alg"], header["typ"], header["kid"]) == ("EdDSA", "at+jwt", keys.signing.kid)
    principal = asyncio.run(verifier.verify(token))
    assert (principal.agent, principal.user, principal.tenant, principal.run) == ("bot", "alice", "acme", "run-1")
    assert principal.scopes == ("read",)
    assert principal.expires_at - principal.issued_at == 60


def test_key_files_are_private_and_reused(tmp_path: Path) -> None:
    first = KeyRing.load(tmp_path / "keys")
    (pem,) = (tmp_path / "keys").glob("*.pem")
    assert pem.stat().st_mode & 0o777 == 0o600
    assert KeyRing.load(tmp_path / "keys").signing.kid == first.signing.kid
    assert first.jwks()["keys"][0]["kid"] == first.signing.kid


def test_ttl_above_the_cap_is_not_minted(parts) -> None:  # noqa: ANN001
    issuer = parts[0]
    with pytest.raises(IdentityError) as caught:
        issuer.mint(agent="bot", tenant="acme", user="alice", scopes=(), ttl=10 * 3600)
    assert caught.value.code == "token_ttl_invalid"


def test_disabled_or_unknown_agent_is_refused(parts) -> None:  # noqa: ANN001
    issuer, verifier, registry, _ = parts
    token = issuer.mint(agent="bot", tenant="acme", user="alice", scopes=(), ttl=60)
    registry.set_status("bot", "disabled")
    asyncio.run(verifier._agents.refresh())
    with pytest.raises(IdentityError) as caught:
        asyncio.run(verifier.verify(token))
    assert caught.value.code == "identity_revoked"
    ghost = issuer.mint(agent="ghost", tenant="acme", user="alice", scopes=(), ttl=60)
    with pytest.raises(IdentityError) as caught:
        asyncio.run(verifier.verify(ghost))
    assert caught.value.code == "identity_unknown_agent"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc.def.ghi", "abc.def.ghi"), ("bearer  abc ", "abc"), (_basic("agent", "abc.def"), "abc.def"),
     (_basic("", "tok"), "tok")],
)
def test_proxy_authorization_forms(header: str, token: str) -> None:
    assert token_from_proxy_authorization(header) == token


@pytest.mark.parametrize(
    ("header", "code"),
    [(None, "identity_missing"), ("", "identity_missing"), ("Bearer", "identity_malformed"),
     ("Basic !!!", "identity_malformed"), (_basic("agent", ""), "identity_malformed"), ("Digest x", "identity_malformed")],
)
def test_proxy_authorization_refusals(header: str | None, code: str) -> None:
    with pytest.raises(IdentityError) as caught:
        token_from_proxy_authorization(header)
    assert caught.value.code == code
