"""The SDK's proxy session through a real gateway: run tokens from the admin API, step stamping,
and a step replayed after an interruption reaching the upstream once."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

from counting import CountingUpstream
from support import Gateway
from wardgate.sdk.errors import GatewayRefused
from wardgate.sdk.http import AsyncProxySession, ProxySession
from wardgate.sdk.runs import Run
from wardgate.sdk.tokens import RunTokens, Token, admin_provider, expiry_of


def run_outcomes(gateway: Gateway, run_id: str, count: int) -> list[dict]:
    """The run's outcome records, oldest first, once ``count`` of them are committed (written after the response)."""
    deadline = time.monotonic() + 10
    while True:
        found = [r for r in gateway.records(wait_for=0) if r["run"] == run_id and r["kind"] == "outcome"]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def session_for(gateway: Gateway, run_id: str, **kw: object) -> ProxySession:
    tokens = RunTokens(admin_provider(gateway.admin, gateway.admin_token, agent="acme-bot", user="alice",
                                      run_id=run_id, ttl="5m"))
    return ProxySession(tokens, proxy=gateway.listeners["proxy"], ca_file=gateway.ca_file, **kw)


def test_admin_api_mints_run_tokens_and_refuses_bad_requests(gateway: Gateway) -> None:
    token = admin_provider(gateway.admin, gateway.admin_token, agent="acme-bot", user="alice", run_id="r-1")()
    assert token.expires_at == expiry_of(token.value) and token.expires_at > time.time()
    for body, code in [({"agent": "acme-bot"}, "bad_request"), ({"agent": "nobody", "user": "u"}, None),
                       ({"agent": "acme-bot", "user": "u", "scopes": ["admin"]}, "scope_not_allowed")]:
        response = httpx.post(f"{gateway.admin}/v1/tokens", json=body, timeout=10,
                              headers={"Authorization": f"Bearer {gateway.admin_token}"})
        assert response.status_code in (400, 404)
        if code:
            assert response.json()["error"]["code"] == code
    unauthenticated = httpx.post(f"{gateway.admin}/v1/tokens", json={"agent": "acme-bot", "user": "u"}, timeout=10)
    assert unauthenticated.status_code == 401


def test_tokens_renew_before_expiry() -> None:
    issued: list[float] = []

    def provider(life: float) -> Token:
        issued.append(life)
        return Token(f"t{len(issued)}", time.time() + life)

    long_lived = RunTokens(lambda: provider(3600))
    assert long_lived.get() == long_lived.get() == "t1" and long_lived.renewals == 1
    issued.clear()
    short = RunTokens(lambda: provider(0.5))
    assert short.get() == "t1" and short.get() == "t2" and short.renewals == 2


def test_step_requests_are_stamped_and_replayed_once_after_an_interruption(
    gateway: Gateway, counting: CountingUpstream, tmp_path: Path
) -> None:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    store = f"sqlite:///{tmp_path}/runs.db"

    def charge(session: ProxySession, interrupt: bool) -> dict:
        response = session.post(f"{counting.url}/allowed/charge", json={"amount": 3})
        if interrupt:
            raise SystemExit("stopped after the call, before the checkpoint")
        return response.json()

    with session_for(gateway, run_id) as session:
        with pytest.raises(SystemExit), Run(store, run_id) as run:
            run.step(charge, session, True, name="charge")
        with Run(store, run_id) as run:
            result = run.step(charge, session, False, name="charge")
    assert result["charge"] == 1 and len(counting.posts) == 1
    records = run_outcomes(gateway, run_id, 2)
    assert len(records) == 2
    assert {r["step"] for r in records} == {"0:charge"} and {r["replay"] for r in records} == {0, 1}
    assert records[0]["idempotency_key"] == records[1]["idempotency_key"] == result["key"]


async def test_async_session_and_gateway_refusals(gateway: Gateway, counting: CountingUpstream, tmp_path: Path) -> None:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    tokens = RunTokens(admin_provider(gateway.admin, gateway.admin_token, agent="acme-bot", user="alice",
                                      run_id=run_id))
    async with AsyncProxySession(tokens, proxy=gateway.listeners["proxy"], ca_file=gateway.ca_file) as session:

        async def charge() -> int:
            return (await session.post(f"{counting.url}/allowed/charge", json={"n": 1})).json()["charge"]

        async def denied() -> None:
            await session.get(f"{counting.url}/forbidden")

        async with Run(f"sqlite:///{tmp_path}/runs.db", run_id) as run:
            assert await run.astep(charge) == 1
            with pytest.raises(GatewayRefused) as info:
                await run.astep(denied)
    assert info.value.status == 403 and info.value.code == "policy_denied"
    # A gateway refusal is not the step's result: the step stays unrecorded, the run resumable.
    from wardgate.sdk.stores import create

    assert [s.name for s in create(f"sqlite:///{tmp_path}/runs.db").steps(run_id)] == [
        "test_async_session_and_gateway_refusals.<locals>.charge"]


def test_a_renewed_token_opens_a_new_proxy_connection_for_the_same_run(
    gateway: Gateway, counting: CountingUpstream
) -> None:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    mint = admin_provider(gateway.admin, gateway.admin_token, agent="acme-bot", user="alice", run_id=run_id)

    def about_to_expire() -> Token:
        # A real 15-minute token the cache treats as expiring now: every get() renews it.
        return Token(mint().value, time.time() + 0.5)

    tokens = RunTokens(about_to_expire)
    with ProxySession(tokens, proxy=gateway.listeners["proxy"], ca_file=gateway.ca_file) as session:
        for _ in range(2):
            assert session.get(f"{counting.url}/allowed/ping").status_code == 200
    assert tokens.renewals == 2
    outcomes = run_outcomes(gateway, run_id, 2)
    assert len(outcomes) == 2 and len({r["token_id"] for r in outcomes}) == 2
