"""The four revocation levers through a real gateway, taken by the real CLI.

The CLI finds the running gateway and goes through its admin API, so the very next request is
refused (no waiting for a poll); each revocation leaves an ``admin`` audit record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import requests

from support import Gateway, Upstream, gateway_environ, start_gateway


@pytest.fixture(scope="module")
def gw(opa_binary: str, tmp_path_factory: pytest.TempPathFactory, acme_policy: Path, upstream_ca_file: Path) -> Iterator[Gateway]:
    gateway = start_gateway(
        tmp_path_factory.mktemp("revocation"), policy_paths=[acme_policy], upstream_ca=upstream_ca_file,
    )
    yield gateway
    gateway.stop()


def wardgate(gw: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**gateway_environ(), "WARDGATE_HOME": str(gw.home)}
    env.pop("WARDGATE_CONFIG", None)
    done = subprocess.run([sys.executable, "-m", "wardgate.gateway.cli", "--config", str(gw.config), *args],
                          capture_output=True, text=True, timeout=60, env=env, cwd=gw.config.parent)
    return done


def call(gw: Gateway, upstream: Upstream, token: str, scheme: str = "http") -> requests.Response:
    base = upstream.http_url if scheme == "http" else upstream.https_url
    proxy = gw.proxy_with(token)
    try:
        return requests.get(f"{base}/allowed/{uuid.uuid4()}", proxies={"http": proxy, "https": proxy},
                            verify=str(gw.ca_file), timeout=15)
    except requests.exceptions.ProxyError as exc:
        fake = requests.Response()
        fake.status_code = 407 if "407" in str(exc) else 599
        return fake


def new_agent(gw: Gateway) -> str:
    name = f"bot-{uuid.uuid4().hex[:8]}"
    gw.create_agent(name, "acme", ["read"])
    return name


def claims(token: str) -> dict[str, object]:
    return jwt.decode(token, options={"verify_signature": False})


def admin_records(gw: Gateway, target: str) -> list[dict[str, object]]:
    return [r for r in gw.records(wait_for=0) if r["kind"] == "admin" and r["path"] == target]


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_token_revocation_refuses_that_token_only(gw: Gateway, upstream: Upstream, scheme: str) -> None:
    agent = new_agent(gw)
    doomed, sibling = gw.mint(agent), gw.mint(agent)
    assert call(gw, upstream, doomed, scheme).status_code == 200
    jti = str(claims(doomed)["jti"])
    done = wardgate(gw, "tokens", "revoke", jti, "--reason", "leaked in a log")
    assert done.returncode == 0, done.stderr
    assert "enforced by the running gateway now" in done.stdout
    refused = call(gw, upstream, doomed, scheme)
    assert refused.status_code == 407
    if scheme == "http":
        assert refused.headers["X-Wardgate-Error"] == "identity_revoked"
        assert refused.json()["error"]["reasons"] == ["token_revoked"]
    assert call(gw, upstream, sibling, scheme).status_code == 200
    (record,) = admin_records(gw, f"token:{jti}")
    assert record["method"] == "REVOKE" and record["token_id"] == jti
    assert record["reasons"][1] == "why:leaked in a log" and record["reasons"][0].startswith("by:cli")


def test_run_revocation_stops_that_run_only(gw: Gateway, upstream: Upstream) -> None:
    agent = new_agent(gw)
    runaway, other_run, no_run = gw.mint(agent, run="run-1"), gw.mint(agent, run="run-2"), gw.mint(agent)
    assert wardgate(gw, "runs", "revoke", "run-1").returncode == 0
    response = call(gw, upstream, runaway)
    assert response.status_code == 407 and response.json()["error"]["reasons"] == ["run_revoked"]
    assert call(gw, upstream, other_run).status_code == 200
    assert call(gw, upstream, no_run).status_code == 200
    assert admin_records(gw, "run:run-1")[0]["run"] == "run-1"


def test_agent_revocation_covers_tokens_issued_before_it(gw: Gateway, upstream: Upstream) -> None:
    import time

    agent = new_agent(gw)
    old = gw.mint(agent, now=time.time() - 5)
    assert wardgate(gw, "agents", "revoke", agent, "--reason", "compromised").returncode == 0
    response = call(gw, upstream, old)
    assert response.status_code == 407 and response.json()["error"]["reasons"] == ["agent_revoked"]
    # A token minted after the revocation (next second onwards) works: the agent itself lives on.
    assert call(gw, upstream, gw.mint(agent, now=time.time() + 1)).status_code == 200
    assert admin_records(gw, f"agent:{agent}")[0]["agent"] == agent


def test_unknown_agent_cannot_be_revoked(gw: Gateway) -> None:
    done = wardgate(gw, "agents", "revoke", "no-such-agent")
    assert done.returncode == 2 and "agent_not_found" in done.stderr


def test_disable_and_enable_agent(gw: Gateway, upstream: Upstream) -> None:
    agent = new_agent(gw)
    token = gw.mint(agent)
    assert wardgate(gw, "agents", "disable", agent).returncode == 0
    response = call(gw, upstream, token)
    assert response.status_code == 407 and response.headers["X-Wardgate-Error"] == "identity_revoked"
    assert wardgate(gw, "agents", "enable", agent).returncode == 0
    assert call(gw, upstream, token).status_code == 200
    assert [r["method"] for r in admin_records(gw, f"agent:{agent}")] == ["DISABLE", "ENABLE"]


def test_key_rotation_then_revocation(gw: Gateway, upstream: Upstream) -> None:
    agent = new_agent(gw)
    old_kid = jwt.get_unverified_header(gw.mint(agent))["kid"]
    old_token = gw.mint(agent)
    # The active key cannot be revoked: that would leave nothing to sign with.
    refused = wardgate(gw, "keys", "revoke", old_kid)
    assert refused.returncode == 2 and "key_active" in refused.stderr
    done = wardgate(gw, "keys", "rotate")
    assert done.returncode == 0, done.stderr
    new_token = gw.mint(agent)
    assert jwt.get_unverified_header(new_token)["kid"] != old_kid
    # Old keys keep verifying after a rotation; the new key is picked up by the running gateway.
    assert call(gw, upstream, old_token).status_code == 200
    assert call(gw, upstream, new_token).status_code == 200
    assert wardgate(gw, "keys", "revoke", old_kid, "--reason", "rotated out").returncode == 0
    response = call(gw, upstream, old_token)
    assert response.status_code == 407 and response.json()["error"]["reasons"] == ["key_revoked"]
    assert call(gw, upstream, new_token).status_code == 200
    published = requests.get(f"{gw.admin}/.well-known/jwks.json", timeout=5).json()
    assert old_kid not in [k["kid"] for k in published["keys"]]


def test_admin_api_revocation_needs_admin_credential(gw: Gateway, upstream: Upstream) -> None:
    agent = new_agent(gw)
    token = gw.mint(agent)
    body = {"kind": "token", "subject": str(claims(token)["jti"])}
    for credential in (None, f"Bearer {token}", "Bearer wga_wrong"):
        headers = {"Authorization": credential} if credential else {}
        response = requests.post(f"{gw.admin}/v1/revocations", json=body, headers=headers, timeout=5)
        assert response.status_code == 401
    assert call(gw, upstream, token).status_code == 200
    headers = {"Authorization": f"Bearer {gw.admin_token}"}
    response = requests.post(f"{gw.admin}/v1/revocations", json=body, headers=headers, timeout=5)
    assert response.status_code == 201 and response.json()["kind"] == "token"
    assert call(gw, upstream, token).status_code == 407
    bad = requests.post(f"{gw.admin}/v1/revocations", json={"kind": "everything", "subject": "x"}, headers=headers, timeout=5)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_revocation_kind"
    view = requests.get(f"{gw.admin}/v1/revocations", headers=headers, timeout=5).json()
    assert body["subject"] in view["tokens"]


def test_cli_revocation_without_a_running_gateway_is_picked_up(tmp_path: Path, gw: Gateway, upstream: Upstream) -> None:
    """Stored directly (no gateway answering at the recorded admin address) → enforced by the poll."""
    agent = new_agent(gw)
    token = gw.mint(agent)
    listeners = gw.home / "run" / "listeners.json"
    saved = listeners.read_text()
    listeners.write_text(json.dumps({**json.loads(saved), "admin": "127.0.0.1:9"}))
    try:
        done = wardgate(gw, "tokens", "revoke", str(claims(token)["jti"]))
    finally:
        listeners.write_text(saved)
    assert done.returncode == 0, done.stderr
    assert "next poll" in done.stdout
    import time

    deadline = time.monotonic() + 5
    while call(gw, upstream, token).status_code != 407:
        assert time.monotonic() < deadline, "revocation written by the CLI never reached the gateway"
        time.sleep(0.1)
