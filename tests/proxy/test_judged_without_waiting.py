"""A call whose identity, destination and decision are known already is judged without waiting.

The ``requestheaders`` steps hand back a coroutine only when they must wait (proxy/inline_hooks.py):
a token not verified before, an agent to read from the registry, a name to resolve, a decision to ask
OPA for, or a refusal's record to commit. Otherwise they return None and the hook completes inside
the event that raised it, with no task of its own. Against real parts: a key ring and agent registry
in tmp_path, a real audit writer, a real OPA.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy.test import tflow

from support import OpaServer
from wardgate.gateway.agents import AgentDirectory, AgentRegistry
from wardgate.gateway.audit_writer import AuditWriter
from wardgate.gateway.destinations import DestinationGuard
from wardgate.gateway.identity import TokenIssuer, TokenVerifier
from wardgate.gateway.keys import KeyRing
from wardgate.gateway.policy import Decision, PolicyClient
from wardgate.gateway.settings import IdentitySettings
from wardgate.proxy.auth import ProxyAuth
from wardgate.proxy.call import call_of
from wardgate.proxy.destinations import DestinationPin
from wardgate.proxy.egress import EgressPolicy


class Identity:
    def __init__(self, folder: Path) -> None:
        self.keys = KeyRing.load(folder / "keys")
        self.registry = AgentRegistry(folder / "state.db")
        self.registry.create("bot", "acme", ["read"])
        self.directory = AgentDirectory(self.registry)
        self.settings = IdentitySettings(leeway=0)
        self.verifier = TokenVerifier(self.keys, self.settings, self.directory)
        self.issuer = TokenIssuer(self.keys, self.settings)

    def token(self, ttl: float = 60, agent: str = "bot") -> str:
        return self.issuer.mint(agent=agent, tenant="acme", user="alice", scopes=("read",), ttl=ttl)


@pytest.fixture
def identity(tmp_path: Path) -> Iterator[Identity]:
    found = Identity(tmp_path)
    yield found
    found.registry.close()


def plain_flow(token: str, url: str = "http://127.0.0.1:8080/x") -> Any:
    flow = tflow.tflow()
    flow.request.url = url
    flow.request.headers["Proxy-Authorization"] = f"Bearer {token}"
    return flow


async def test_a_token_verified_before_is_checked_without_waiting(audit_writer: AuditWriter, identity: Identity) -> None:
    auth = ProxyAuth(identity.verifier, audit_writer, 5.0)
    await identity.directory.refresh()
    token = identity.token()
    first = plain_flow(token)
    waiting = auth.requestheaders(first)
    assert waiting is not None, "a token seen for the first time is verified in full"
    await waiting
    assert call_of(first).principal is not None and first.response is None

    again = plain_flow(token)
    assert auth.requestheaders(again) is None
    principal = call_of(again).principal
    assert principal is not None and (principal.agent, principal.tenant) == ("bot", "acme")
    assert "proxy-authorization" not in again.request.headers


async def test_an_agent_not_in_the_snapshot_is_read_from_the_registry(audit_writer: AuditWriter, identity: Identity) -> None:
    auth = ProxyAuth(identity.verifier, audit_writer, 5.0)
    await identity.directory.refresh()
    token = identity.token()
    await auth.requestheaders(plain_flow(token))  # type: ignore[misc]
    identity.registry.create("late", "acme", ["read"])  # registered after the snapshot was read
    late = identity.token(agent="late")
    await auth.requestheaders(plain_flow(late))  # type: ignore[misc]  # verified in full, registry read
    flow = plain_flow(late)
    assert auth.requestheaders(flow) is None and call_of(flow).principal is not None


async def test_a_refusal_still_waits_for_its_record(audit_writer: AuditWriter, identity: Identity, tmp_path: Path) -> None:
    auth = ProxyAuth(identity.verifier, audit_writer, 5.0)
    await identity.directory.refresh()
    token = identity.token(ttl=1)
    await auth.requestheaders(plain_flow(token))  # type: ignore[misc]  # verified and cached while live
    await asyncio.sleep(1.1)
    expired = plain_flow(token)
    refusing = auth.requestheaders(expired)
    assert refusing is not None and expired.response is None, "nothing is answered before the record is durable"
    await refusing
    assert expired.response is not None and expired.response.status_code == 407
    assert call_of(expired).principal is None

    bound = plain_flow(identity.token())
    auth._bound[bound.client_conn.id] = await identity.verifier.verify(identity.token())
    identity.registry.set_status("bot", "disabled")
    await identity.directory.refresh()
    refusing = auth.requestheaders(bound)
    assert refusing is not None
    await refusing
    assert bound.response is not None and bound.response.status_code == 407
    with sqlite3.connect(tmp_path / "audit.db") as db:  # the tunnel's identity is named in its refusal
        refusal = db.execute("SELECT agent, error FROM audit_records WHERE call_id = ? AND kind = 'refusal'",
                             (call_of(bound).call_id,)).fetchone()
    assert refusal == ("bot", "identity_revoked") and call_of(bound).principal is None


async def test_a_destination_resolved_before_is_pinned_without_waiting(audit_writer: AuditWriter) -> None:
    guard = DestinationGuard(allow_ranges=["127.0.0.0/8", "::1/128"])
    pin = DestinationPin(guard, audit_writer, 5.0)

    def judged(url: str) -> Any:
        flow = tflow.tflow()
        flow.request.url = url
        call_of(flow).decision = Decision(allow=True)
        return flow

    literal = judged("http://127.0.0.1:8080/x")
    assert pin.requestheaders(literal) is None and pin.pinned(literal) == "127.0.0.1"
    named = judged("http://localhost:8080/x")
    resolving = pin.requestheaders(named)
    assert resolving is not None, "a name not resolved yet is looked up"
    await resolving
    assert pin.pinned(named) in ("127.0.0.1", "::1")
    again = judged("http://localhost:8080/y")
    assert pin.requestheaders(again) is None and pin.pinned(again) == pin.pinned(named)


POLICY = """package wardgate.test

import rego.v1

decision := {"allow": input.request.method == "GET", "reasons": ["by method"]}
"""


@pytest.fixture(scope="module")
def opa(opa_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    root = tmp_path_factory.mktemp("policy")
    (root / "policy.rego").write_text(POLICY)
    server = OpaServer([root])
    server.start()
    yield server
    server.kill()


async def test_a_decision_given_before_is_reused_without_waiting(audit_writer: AuditWriter, identity: Identity, opa: OpaServer) -> None:
    await identity.directory.refresh()
    principal = await identity.verifier.verify(identity.token())
    async with PolicyClient(opa.url, "wardgate/test/decision", 5.0, cache_size=16) as client:
        client.cache.scope((("request", "method"),))  # what the policy reads (gateway/decision_cache.py)
        egress = EgressPolicy(client, audit_writer, 5.0)

        def identified(method: str) -> Any:
            flow = tflow.tflow()
            flow.request.method = method
            call_of(flow).principal = principal
            return flow

        first = identified("GET")
        asking = egress.requestheaders(first)
        assert asking is not None, "the first call of its kind is decided by OPA"
        await asking
        assert call_of(first).decision is not None and call_of(first).decision.allow  # type: ignore[union-attr]

        again = identified("GET")
        assert egress.requestheaders(again) is None
        assert (client.cache.hits, client.cache.misses) == (1, 1)
        assert call_of(again).decision == call_of(first).decision and call_of(again).policy_ms is not None

        denied = identified("DELETE")
        await egress.requestheaders(denied)  # type: ignore[misc]  # asked, denied, refusal committed
        assert denied.response is not None and denied.response.status_code == 403
        repeat = identified("DELETE")
        refusing = egress.requestheaders(repeat)
        assert refusing is not None and repeat.response is None, "a denial from the cache still waits for its record"
        await refusing
        assert repeat.response is not None and repeat.response.status_code == 403
