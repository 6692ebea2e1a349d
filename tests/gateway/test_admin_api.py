"""The admin API on its own listener: public health and keys, everything else admin-only."""

from __future__ import annotations

import jwt
import pytest
import requests

from support import Gateway


def test_health_and_readiness(gateway: Gateway) -> None:
    assert requests.get(f"{gateway.admin}/healthz", timeout=5).json() == {"status": "ok"}
    assert requests.get(f"{gateway.admin}/readyz", timeout=5).json() == {"ready": True}


def test_jwks_verifies_minted_tokens(gateway: Gateway) -> None:
    jwks = requests.get(f"{gateway.admin}/.well-known/jwks.json", timeout=5).json()
    token = gateway.mint("acme-bot")
    kid = jwt.get_unverified_header(token)["kid"]
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == kid]
    assert (jwk["kty"], jwk["crv"], jwk["alg"]) == ("OKP", "Ed25519", "EdDSA")
    assert "d" not in jwk
    key = jwt.PyJWK(jwk).key
    assert jwt.decode(token, key, algorithms=["EdDSA"], audience="wardgate-proxy")["act"]["sub"] == "acme-bot"


@pytest.mark.parametrize("credential", [None, "Bearer wrong", "agent-token", "Basic YWRtaW46YWRtaW4="])
def test_admin_endpoints_refuse_anything_but_the_admin_token(gateway: Gateway, credential: str | None) -> None:
    if credential == "agent-token":
        credential = f"Bearer {gateway.mint('acme-bot')}"
    headers = {"Authorization": credential} if credential else {}
    response = requests.get(f"{gateway.admin}/v1/agents", headers=headers, timeout=5)
    assert response.status_code == 401
    assert response.headers["X-Wardgate-Error"] == "admin_unauthorized"
    assert response.json()["error"]["code"] == "admin_unauthorized"


def test_agents_through_the_api(gateway: Gateway) -> None:
    auth = {"Authorization": f"Bearer {gateway.admin_token}"}
    created = requests.post(f"{gateway.admin}/v1/agents", json={"name": "api-bot", "tenant": "acme", "scopes": ["read"]},
                            headers=auth, timeout=5)
    assert created.status_code == 201 and created.json()["status"] == "active"
    again = requests.post(f"{gateway.admin}/v1/agents", json={"name": "api-bot", "tenant": "acme"}, headers=auth, timeout=5)
    assert (again.status_code, again.json()["error"]["code"]) == (400, "agent_exists")
    bad = requests.post(f"{gateway.admin}/v1/agents", data=b"{not json", headers=auth, timeout=5)
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "bad_request")
    missing = requests.get(f"{gateway.admin}/v1/agents/nobody", headers=auth, timeout=5)
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "agent_not_found")
    names = [a["name"] for a in requests.get(f"{gateway.admin}/v1/agents", headers=auth, timeout=5).json()["agents"]]
    assert "api-bot" in names


def test_audit_records_by_call_id(gateway: Gateway, upstream) -> None:  # noqa: ANN001
    proxy = gateway.proxy_with(gateway.mint("acme-bot"))
    call_id = requests.get(f"{upstream.http_url}/allowed/api", proxies={"http": proxy}, timeout=10).headers["X-Wardgate-Audit-Id"]
    gateway.records(call_id, wait_for=2)
    auth = {"Authorization": f"Bearer {gateway.admin_token}"}
    records = requests.get(f"{gateway.admin}/v1/audit/records", params={"call_id": call_id}, headers=auth, timeout=5).json()["records"]
    assert sorted(r["kind"] for r in records) == ["intent", "outcome"]
    unknown = requests.get(f"{gateway.admin}/v1/audit/records", params={"call_id": "nope"}, headers=auth, timeout=5)
    assert unknown.status_code == 404
