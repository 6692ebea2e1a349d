"""Credential injection end to end: a real gateway, real TLS upstreams on loopback, real clients.

The agent never sends the user's secret; the upstream receives it; the agent never sees it again.
Every case checks what reached the upstream, what reached the client and the audit records.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt
import pytest
import requests
import trustme

from credential_upstream import CredentialUpstream
from support import Gateway, Upstream, start_gateway, write_tenant_policy
from wardgate.gateway.vault import KeySource, Vault

TOKEN = "tok/en+canary=0123456789abcdef"  # '/', '+', '=' make URL-encoded and base64 forms differ
BASIC = "svc-user:pa ss/word+0123456789"
QUERY_KEY = "qk_0123456789abcdefghij"
HOLDER = "hold_0123456789abcdefghij"

SERVICES = ["bearer", "basic", "query", "holder", "internal", "oauth", "sensitive", "missing", "tampered", "forbidden",
            "refreshfail", "connected", "changing"]
PORT = {name: index for index, name in enumerate(SERVICES)}
UNBOUND = len(SERVICES)  # one more TLS port on localhost that no service lists

EXTRA_REGO = """package wardgate.authz

import rego.v1

# Test-only: a policy can refuse a credential by service name (the input names it).
deny_reasons contains "credential_refused" if input.credential.service == "forbidden"
"""


def services_toml(up: CredentialUpstream, untrusted_port: int) -> str:
    def section(name: str, body: str, port: int | None = None) -> str:
        return f'[services.{name}]\nhosts = ["localhost"]\nports = [{port or up.ports[PORT[name]]}]\n{body}\n'

    return "".join([
        section("bearer", 'strip_headers = ["X-Api-Key"]\nstrip_cookies = ["session"]\ninspection_limit = 4096'),
        section("basic", 'mechanism = "basic"'),
        section("query", 'mechanism = "query"\nquery_param = "api_key"'),
        section("holder", 'mode = "placeholder"\nheader = "X-Api-Key"\ntemplate = "{token}"'),
        section("internal", 'mechanism = "assertion"\naudience = "internal-tools"\nassertion_ttl = "30s"'),
        section("oauth", "refresh_skew = 60"),
        section("sensitive", "sensitive = true\ninspection_limit = 4096"),
        section("missing", ""),
        section("tampered", ""),
        section("forbidden", ""),
        section("refreshfail", ""),
        section("changing", ""),
        section("untrusted", "", untrusted_port),
        section("connected", "") + (
            "[services.connected.oauth]\n"
            f'authorization_endpoint = "{up.url(0, "/oauth/authorize")}"\n'
            f'token_endpoint = "{up.url(0, "/oauth/token")}"\n'
            f'client_id = "{up.tokens.client[0]}"\nclient_secret = "{up.tokens.client[1]}"\nscopes = ["repo", "read"]\n'
        ),
    ])


@pytest.fixture(scope="module")
def cred_upstream(test_ca: trustme.CA) -> Iterator[CredentialUpstream]:
    server = CredentialUpstream(test_ca, len(SERVICES) + 1)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def untrusted_upstream() -> Iterator[Upstream]:
    server = Upstream(trustme.CA())  # a CA the gateway does not trust
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cred_gateway(
    opa_binary: str, tmp_path_factory: pytest.TempPathFactory, upstream_ca_file: Path,
    cred_upstream: CredentialUpstream, untrusted_upstream: Upstream,
) -> Iterator[Gateway]:
    policy = tmp_path_factory.mktemp("cred-policy")
    rules = [{"host": host, "methods": ["GET", "POST"], "paths": ["/allowed", "/oauth"]} for host in ("localhost", "127.0.0.1")]
    write_tenant_policy(policy, "acme", rules)
    (policy / "credential_test_rules.rego").write_text(EXTRA_REGO)
    gw = start_gateway(
        tmp_path_factory.mktemp("cred-gateway"), policy_paths=[policy], upstream_ca=upstream_ca_file,
        extra_config=services_toml(cred_upstream, untrusted_upstream.https_port),
    )
    gw.create_agent("acme-bot", "acme", ["read", "write"])
    vault = Vault(gw.settings.state_db, KeySource(gw.settings), create_keys=True)
    for service, secret in [("bearer", TOKEN), ("basic", BASIC), ("query", QUERY_KEY), ("holder", HOLDER),
                            ("sensitive", TOKEN), ("tampered", TOKEN), ("forbidden", TOKEN), ("untrusted", TOKEN)]:
        vault.put("acme", "alice", service, "secret", secret.encode())
    vault.close()
    db = sqlite3.connect(gw.settings.state_db)
    db.execute("UPDATE credentials SET ciphertext = ? || substr(ciphertext, 2) WHERE service = 'tampered'", (b"\x00",))
    db.commit()
    db.close()
    wait_until_agent_known(gw, cred_upstream.plain_url("/allowed/probe"))
    yield gw
    gw.stop()


def wait_until_agent_known(gw: Gateway, url: str) -> None:
    """The gateway re-reads the agent registry at most every 0.2 s; probe until it knows the agent."""
    for _ in range(100):
        if call(gw, url).status_code != 407:
            return
        time.sleep(0.05)
    raise AssertionError("the gateway never saw the agent")


def call(gw: Gateway, url: str, *, method: str = "GET", headers: dict[str, str] | None = None,
         user: str = "alice") -> requests.Response:
    proxy = gw.proxy_with(gw.mint("acme-bot", user=user))
    return requests.request(method, url, headers=headers, proxies={"http": proxy, "https": proxy},
                            verify=str(gw.ca_file), timeout=20, allow_redirects=False)


def outcome(gw: Gateway, response: requests.Response) -> dict:
    call_id = response.headers["X-Wardgate-Audit-Id"]
    records = gw.records(call_id, wait_for=2)
    return records[-1]


def auth_headers(seen_headers: dict[str, str], name: str) -> list[str]:
    return [v for k, v in seen_headers.items() if k.lower() == name.lower()]


AGENT_SUPPLIED = {"Authorization": "Bearer agent-own-token", "X-Api-Key": "agent-key", "Cookie": "session=agent; theme=dark"}


@pytest.mark.parametrize(
    ("service", "expected_header", "expected_value"),
    [
        ("bearer", "Authorization", f"Bearer {TOKEN}"),
        ("basic", "Authorization", "Basic " + base64.b64encode(BASIC.encode()).decode()),
    ],
)
def test_header_mechanisms_replace_what_the_agent_sent(
    cred_gateway: Gateway, cred_upstream: CredentialUpstream, service: str, expected_header: str, expected_value: str
) -> None:
    path = f"/allowed/{uuid.uuid4()}"
    response = call(cred_gateway, cred_upstream.url(PORT[service], path), headers=AGENT_SUPPLIED)
    assert response.status_code == 200, response.text
    seen = cred_upstream.last(path).headers
    assert auth_headers(seen, expected_header) == [expected_value]  # replaced, never merged or duplicated
    if service == "bearer":
        assert auth_headers(seen, "X-Api-Key") == []  # configured extra header removed
        assert auth_headers(seen, "Cookie") == ["theme=dark"]  # configured cookie removed, others kept
    # The upstream echoes every header back; the agent gets the echo with the secret scrubbed.
    secret = TOKEN if service == "bearer" else BASIC
    assert secret not in response.text and expected_value.split(" ")[1] not in response.text
    assert "[wardgate:scrubbed]" in response.text
    intent, done = cred_gateway.records(response.headers["X-Wardgate-Audit-Id"], wait_for=2)
    assert intent["credential_service"] == service and done["credential_service"] == service
    assert done["scrub_count"] >= 1


def test_marker_on_its_own_bound_host_is_always_filled_in(cred_gateway: Gateway, cred_upstream: CredentialUpstream) -> None:
    path = f"/allowed/{uuid.uuid4()}"
    response = call(cred_gateway, cred_upstream.url(PORT["bearer"], path) + "?sig=wardgate%3Abearer",
                    headers={"X-Other": "token wardgate:bearer"})
    assert response.status_code == 200
    seen = cred_upstream.last(path)
    assert seen.headers["X-Other"] == f"token {TOKEN}" and "wardgate" not in seen.path


def test_rotating_the_master_key_under_a_running_gateway(cred_gateway: Gateway, cred_upstream: CredentialUpstream) -> None:
    env = {**os.environ, "WARDGATE_HOME": str(cred_gateway.home)}
    done = subprocess.run(
        [sys.executable, "-m", "wardgate.gateway.cli", "--config", str(cred_gateway.config), "creds",
         "rotate-master-key", "--retire-old"], capture_output=True, env=env, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert b"retired 1 old key(s)" in done.stdout
    path = f"/allowed/{uuid.uuid4()}"
    response = call(cred_gateway, cred_upstream.url(PORT["bearer"], path))
    assert response.status_code == 200
    assert auth_headers(cred_upstream.last(path).headers, "Authorization") == [f"Bearer {TOKEN}"]


def test_a_credential_changed_by_the_cli_is_used_as_changed_on_the_next_call(
    cred_gateway: Gateway, cred_upstream: CredentialUpstream
) -> None:
    """The gateway keeps credentials between calls; a write by another process ends that at once."""
    env = {**os.environ, "WARDGATE_HOME": str(cred_gateway.home)}

    def creds(action: str, secret: bytes | None = None) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "wardgate.gateway.cli", "--config", str(cred_gateway.config), "creds", action,
             "--tenant", "acme", "--user", "alice", "--service", "changing"],
            input=secret, capture_output=True, env=env, timeout=60,
        )
        assert done.returncode == 0, done.stderr

    def sent() -> list[str] | int:
        path = f"/allowed/{uuid.uuid4()}"
        response = call(cred_gateway, cred_upstream.url(PORT["changing"], path))
        if response.status_code != 200:
            assert cred_upstream.count(path) == 0
            return response.status_code
        return auth_headers(cred_upstream.last(path).headers, "Authorization")

    creds("put", b"first-secret-0123456789\n")
    assert sent() == sent() == ["Bearer first-secret-0123456789"]
    creds("put", b"second-secret-0123456789\n")
    assert sent() == ["Bearer second-secret-0123456789"]
    creds("delete")
    assert sent() == 403
    creds("put", b"third-secret-0123456789\n")
    assert sent() == ["Bearer third-secret-0123456789"]


@pytest.mark.parametrize("client", ["curl", "node"])
def test_injection_and_scrubbing_from_other_clients(
    cred_gateway: Gateway, cred_upstream: CredentialUpstream, client: str, tmp_path: Path
) -> None:
    from test_call_matrix import CLIENTS  # the real curl and Node (undici) drivers of the call matrix

    path = f"/allowed/{uuid.uuid4()}"
    proxy = cred_gateway.proxy_with(cred_gateway.mint("acme-bot"))
    result = CLIENTS[client]("GET", cred_upstream.url(PORT["bearer"], path), proxy, cred_gateway.ca_file, tmp_path)
    assert result.status == 200, result
    assert auth_headers(cred_upstream.last(path).headers, "Authorization") == [f"Bearer {TOKEN}"]
    assert TOKEN not in result.body and "[wardgate:scrubbed]" in result.body


def test_query_mechanism_replaces_the_parameter(cred_gateway: Gateway, cred_upstream: CredentialUpstream) -> None:
    path = f"/allowed/{uuid.uuid4()}"
    response = call(cred_gateway, cred_upstream.url(PORT["query"], path + "?api_key=agent&q=1"))
    assert response.status_code == 200
    seen = cred_upstream.last(path).path
    assert seen.count("api_key=") == 1 and f"api_key={QUERY_KEY}" in seen and "q=1" in seen
    assert QUERY_KEY not in response.text


@pytest.mark.parametrize(
    ("where", "url_of"),
    [
        ("plain http", lambda up, path: up.plain_url(path)),
        ("another port", lambda up, path: up.url(UNBOUND, path)),  # localhost, but no service lists this port
        ("another host", lambda up, path: up.url(PORT["bearer"], path, host="127.0.0.1")),
    ],
)
def test_no_injection_outside_the_binding(cred_gateway: Gateway, cred_upstream: CredentialUpstream, where: str, url_of) -> None:  # noqa: ANN001
    path = f"/allowed/{uuid.uuid4()}"
    response = call(cred_gateway, url_of(cred_upstream, path), headers={"Authorization": "Bearer agent-own-token"})
    assert response.status_code == 200, response.text
    seen = cred_upstream.last(path).headers
    assert auth_headers(seen, "Authorization") == ["Bearer agent-own-token"]
    assert outcome(cred_gateway, response)["credential_service"] is None


def test_placeholder_is_replaced_on_its_bound_host_only(cred_gateway: Gateway, cred_upstream: CredentialUpstream) -> None:
    path = f"/allowed/{uuid.uuid4()}"
    response = call(cred_gateway, cred_upstream.url(PORT["holder"], path), headers={"X-Api-Key": "wardgate:holder"})
    assert response.status_code == 200
    assert auth_headers(cred_upstream.last(path).headers, "X-Api-Key") == [HOLDER]
    # Without the marker a placeholder-mode service injects nothing.
    bare = f"/allowed/{uuid.uuid4()}"
    assert call(cred_gateway, cred_upstream.url(PORT["holder"], bare)).status_code == 200
    assert HOLDER not in json.dumps(cred_upstream.last(bare).headers)


@pytest.mark.parametrize(
    "target",
    [
        lambda up, path: up.url(PORT["bearer"], path),               # bound to another service
        lambda up, path: up.url(PORT["holder"], path, "127.0.0.1"),  # not bound at all
        lambda up, path: up.plain_url(path),                         # plain HTTP
        lambda up, path: up.url(PORT["holder"], path + "/wardgate:holder"),  # in the path: never filled in
    ],
)
def test_placeholder_sent_elsewhere_is_refused_not_forwarded(cred_gateway: Gateway, cred_upstream: CredentialUpstream, target) -> None:  # noqa: ANN001
    path = f"/allowed/{uuid.uuid4()}"
    response = call(cred_gateway, target(cred_upstream, path), headers={"X-Api-Key": "Bearer wardgate:holder"})
    assert response.status_code == 400
    assert response.headers["X-Wardgate-Error"] == "credential_placeholder_misplaced"
    assert not any(r.path.startswith(path) for r in cred_upstream.seen)
    (record,) = cred_gateway.records(response.json()["error"]["audit_id"])
    assert record["kind"] == "refusal" and record["error"] == "credential_placeholder_misplaced"


@pytest.mark.parametrize(
    ("service", "status", "code"),
    [("missing", 403, "credential_missing"), ("tampered", 503, "vault_unavailable")],
)
def test_credential_lookup_failures_fail_closed(
    cred_gateway: Gateway, cred_upstream: CredentialUpstream, service: str, status: int, code: str
) -> None:
    path = f"/allowed/{uuid.uuid4()}"
    response = call(cred_gateway, cred_upstream.url(PORT[service], path))
    assert response.status_code == status and response.headers["X-Wardgate-Error"] == code
    assert cred_upstream.count(path) == 0
    records = cred_gateway.records(response.json()["error"]["audit_id"], wait_for=2)
    assert records[-1]["kind"] == "refusal" and records[-1]["error"] == code
    assert records[-1]["credential_service"] == service


def test_policy_sees_the_service_and_can_refuse_it(cred_gateway: Gateway, cred_upstream: CredentialUpstream) -> None:
    path = f"/allowed/{uuid.uuid4()}"
    response = call(cred_gateway, cred_upstream.url(PORT["forbidden"], path))
    assert response.status_code == 403
    assert response.json()["error"]["reasons"] == ["credential_refused"]
    assert cred_upstream.count(path) == 0


def test_host_header_naming_another_host_is_refused(cred_gateway: Gateway, cred_upstream: CredentialUpstream) -> None:
    path = f"/allowed/{uuid.uuid4()}"
    port = cred_upstream.ports[PORT["bearer"]]
    response = call(cred_gateway, cred_upstream.url(PORT["bearer"], path, host="127.0.0.1"),
                    headers={"Host": f"localhost:{port}"})
    assert response.status_code == 400 and response.headers["X-Wardgate-Error"] == "destination_mismatch"
    assert cred_upstream.count(path) == 0


def test_no_injection_over_unverified_upstream_tls(cred_gateway: Gateway, untrusted_upstream: Upstream) -> None:
    path = f"/allowed/{uuid.uuid4()}"
    response = call(cred_gateway, f"https://localhost:{untrusted_upstream.https_port}{path}")
    assert response.status_code == 502
    assert untrusted_upstream.count(path) == 0


@pytest.mark.parametrize("kind", ["header", "gzip", "br", "chunked"])
def test_echoed_secret_is_scrubbed(cred_gateway: Gateway, cred_upstream: CredentialUpstream, kind: str) -> None:
    path = f"/allowed/{kind}/{uuid.uuid4()}"
    response = call(cred_gateway, cred_upstream.url(PORT["bearer"], path), headers={"Accept-Encoding": "gzip, br"})
    assert response.status_code == 200
    assert TOKEN in cred_upstream.last(path).headers["Authorization"]
    everything = response.text + json.dumps(dict(response.headers))
    for form in (TOKEN, base64.b64encode(TOKEN.encode()).decode(), "tok%2Fen%2Bcanary"):
        assert form not in everything
    assert "[wardgate:scrubbed]" in everything
    assert outcome(cred_gateway, response)["scrub_count"] >= 1


def test_echoed_basic_and_url_encoded_forms_are_scrubbed(cred_gateway: Gateway, cred_upstream: CredentialUpstream) -> None:
    path = f"/allowed/{uuid.uuid4()}"
    response = call(cred_gateway, cred_upstream.url(PORT["basic"], path))
    encoded = base64.b64encode(BASIC.encode()).decode()
    assert encoded not in response.text and "[wardgate:scrubbed]" in response.text
    # The query mechanism's value is echoed URL-encoded in the path.
    qpath = f"/allowed/{uuid.uuid4()}"
    response = call(cred_gateway, cred_upstream.url(PORT["query"], qpath))
    assert QUERY_KEY not in response.text and response.json()["path"].endswith("api_key=[wardgate:scrubbed]")


@pytest.mark.parametrize(
    ("service", "kind", "reason"),
    [("bearer", "weird", "unknown_content_encoding"), ("sensitive", "big", "inspection_limit_exceeded"),
     ("sensitive", "bigchunked", "inspection_limit_exceeded"), ("sensitive", "bigstall", "inspection_limit_exceeded"),
     ("bearer", "bomb", "decoded_size_exceeded"), ("sensitive", "bomb", "inspection_limit_exceeded")],
)
def test_uninspectable_responses_are_refused(
    cred_gateway: Gateway, cred_upstream: CredentialUpstream, service: str, kind: str, reason: str
) -> None:
    """Refused, never passed through. A sensitive service's body is refused as soon as more than its
    inspection limit has arrived (bigstall sends that much, then nothing for 60 s), not held whole;
    a body that would inflate past what may be held to scrub it is refused, not inflated (bomb)."""
    path = f"/allowed/{kind}/{uuid.uuid4()}"
    response = call(cred_gateway, cred_upstream.url(PORT[service], path))
    assert response.status_code == 502 and response.headers["X-Wardgate-Error"] == "response_uninspectable"
    assert response.json()["error"]["reasons"] == [reason]
    assert TOKEN not in response.text
    records = cred_gateway.records_for(path, lambda found: any(r["kind"] != "intent" for r in found))
    assert [r["error"] for r in records if r["kind"] != "intent"] == ["response_uninspectable"]


@pytest.mark.parametrize("kind", ["big", "bigecho", "bigecho-gzip", "bigchunked", "bigchunked-gzip", "sse"])
def test_streamed_responses_are_scrubbed_in_flight(cred_gateway: Gateway, cred_upstream: CredentialUpstream, kind: str) -> None:
    """Bodies over a non-sensitive service's inspection limit (announced, or of unknown length once
    that much has arrived), and event streams, are not buffered: they are decoded and scrubbed chunk
    by chunk, a secret split across chunks included. (A buffered gzip body would keep its encoding.)"""
    path = f"/allowed/{kind}/{uuid.uuid4()}"
    response = call(cred_gateway, cred_upstream.url(PORT["bearer"], path))
    assert response.status_code == 200
    assert response.headers.get("Transfer-Encoding") == "chunked" and "Content-Encoding" not in response.headers
    if kind == "big":
        assert response.content == b"x" * 8192
        return
    assert TOKEN not in response.text and "tok%2Fen" not in response.text
    expected = {"bigecho": 1, "bigecho-gzip": 1, "bigchunked": 1, "bigchunked-gzip": 1, "sse": 2}[kind]
    assert response.text.count("[wardgate:scrubbed]") >= expected
    if kind == "sse":
        assert response.text.startswith("data: hello\n\n")
        assert response.text.count("data: [wardgate:scrubbed]\n\n") == 2
    assert outcome(cred_gateway, response)["scrub_count"] >= expected


def test_redirect_is_returned_and_the_follow_up_is_judged_on_its_own_host(
    cred_gateway: Gateway, cred_upstream: CredentialUpstream
) -> None:
    follow = cred_upstream.url(PORT["bearer"], f"/allowed/{uuid.uuid4()}", host="127.0.0.1")
    path = f"/allowed/redirect/{uuid.uuid4()}"
    response = call(cred_gateway, cred_upstream.url(PORT["bearer"], path) + f"?to={follow}")
    assert response.status_code == 302 and response.headers["Location"] == follow
    assert cred_upstream.count(follow.split(str(cred_upstream.ports[PORT["bearer"]]))[1]) == 0  # not followed
    second = call(cred_gateway, follow, headers={"Authorization": "Bearer agent-own-token"})
    assert second.status_code == 200
    seen = cred_upstream.last(follow.split(str(cred_upstream.ports[PORT["bearer"]]))[1]).headers
    assert auth_headers(seen, "Authorization") == ["Bearer agent-own-token"]  # no injection on the other host


def test_signed_assertion_verifies_against_the_jwks(cred_gateway: Gateway, cred_upstream: CredentialUpstream) -> None:
    path = f"/allowed/{uuid.uuid4()}"
    token = cred_gateway.mint("acme-bot", user="carol", run="run-42")
    proxy = cred_gateway.proxy_with(token)
    response = requests.get(cred_upstream.url(PORT["internal"], path), proxies={"https": proxy},
                            verify=str(cred_gateway.ca_file), timeout=20, headers={"Authorization": "Bearer forged"})
    assert response.status_code == 200
    (header,) = auth_headers(cred_upstream.last(path).headers, "Authorization")
    assertion = header.removeprefix("Bearer ")
    jwks = requests.get(f"{cred_gateway.admin}/.well-known/jwks.json", timeout=10).json()
    kid = jwt.get_unverified_header(assertion)["kid"]
    key = jwt.PyJWK(next(k for k in jwks["keys"] if k["kid"] == kid))
    claims = jwt.decode(assertion, key.key, algorithms=[key.algorithm_name], audience="internal-tools",
                        issuer=cred_gateway.settings.identity.issuer)
    assert (claims["sub"], claims["act"], claims["tenant"], claims["run"]) == ("carol", {"sub": "acme-bot"}, "acme", "run-42")
    assert claims["jti"] == response.headers["X-Wardgate-Audit-Id"]
    assert 0 < claims["exp"] - claims["iat"] <= 30
    assert jwt.get_unverified_header(assertion)["typ"] == "wardgate-assertion+jwt"
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(assertion, key.key, algorithms=[key.algorithm_name], audience="another-service")
    assert assertion not in response.text  # echoed back, scrubbed


def _put_grant(gw: Gateway, user: str, service: str, grant: dict) -> None:
    vault = Vault(gw.settings.state_db, KeySource(gw.settings))
    try:
        vault.put("acme", user, service, "oauth", json.dumps(grant).encode())
    finally:
        vault.close()


def _grant(gw: Gateway, user: str, service: str) -> dict:
    vault = Vault(gw.settings.state_db, KeySource(gw.settings))
    try:
        found = vault.get("acme", user, service)
        assert found is not None
        return json.loads(found.secret.reveal())
    finally:
        vault.close()


def test_oauth_refresh_is_single_flight_and_persists_the_rotated_token(
    cred_gateway: Gateway, cred_upstream: CredentialUpstream
) -> None:
    tokens = cred_upstream.tokens
    tokens.valid_refresh.add("refresh-original-0123456789")
    client_id, client_secret = tokens.client
    _put_grant(cred_gateway, "dave", "oauth", {
        "access_token": "access-expired-0123456789", "refresh_token": "refresh-original-0123456789",
        "expires_at": 1, "token_endpoint": cred_upstream.url(0, "/oauth/token"),
        "client_id": client_id, "client_secret": client_secret,
    })
    before = tokens.calls
    paths = [f"/allowed/{uuid.uuid4()}" for _ in range(5)]
    with ThreadPoolExecutor(len(paths)) as pool:
        responses = list(pool.map(lambda p: call(cred_gateway, cred_upstream.url(PORT["oauth"], p), user="dave"), paths))
    assert [r.status_code for r in responses] == [200] * len(paths)
    assert tokens.calls - before == 1  # one refresh for five concurrent calls
    fresh = {cred_upstream.last(p).headers["Authorization"] for p in paths}
    assert len(fresh) == 1 and next(iter(fresh)).startswith("Bearer access-fresh-")
    stored = _grant(cred_gateway, "dave", "oauth")
    assert stored["refresh_token"].startswith("refresh-rotated-") and stored["refresh_token"] in tokens.valid_refresh
    assert stored["expires_at"] > 1
    # The next call uses the stored token without refreshing again.
    again = f"/allowed/{uuid.uuid4()}"
    assert call(cred_gateway, cred_upstream.url(PORT["oauth"], again), user="dave").status_code == 200
    assert tokens.calls - before == 1


def test_failed_refresh_is_refused_and_audited(cred_gateway: Gateway, cred_upstream: CredentialUpstream) -> None:
    client_id, client_secret = cred_upstream.tokens.client
    _put_grant(cred_gateway, "erin", "refreshfail", {
        "access_token": "access-expired-9876543210", "refresh_token": "refresh-revoked-9876543210",
        "expires_at": 1, "token_endpoint": cred_upstream.url(0, "/oauth/token"),
        "client_id": client_id, "client_secret": client_secret,
    })
    before = cred_upstream.tokens.calls
    paths = [f"/allowed/{uuid.uuid4()}" for _ in range(3)]
    with ThreadPoolExecutor(len(paths)) as pool:
        responses = list(pool.map(lambda p: call(cred_gateway, cred_upstream.url(PORT["refreshfail"], p), user="erin"), paths))
    # Calls queued behind a failed refresh get its answer instead of each asking the endpoint again.
    assert cred_upstream.tokens.calls - before == 1
    assert {r.headers["X-Wardgate-Error"] for r in responses} == {"credential_refresh_failed"}
    path, response = paths[0], responses[0]
    assert response.status_code == 502 and response.headers["X-Wardgate-Error"] == "credential_refresh_failed"
    assert response.json()["error"]["reasons"] == ["invalid_grant"]
    assert "refresh-revoked" not in response.text and "access-expired" not in response.text
    assert all(cred_upstream.count(p) == 0 for p in paths)
    record = cred_gateway.records(response.json()["error"]["audit_id"], wait_for=2)[-1]
    assert (record["kind"], record["error"], record["credential_service"]) == ("refusal", "credential_refresh_failed", "refreshfail")


def test_creds_connect_runs_the_authorization_code_flow_with_pkce(
    cred_gateway: Gateway, cred_upstream: CredentialUpstream, upstream_ca_file: Path
) -> None:
    env = {**os.environ, "WARDGATE_HOME": str(cred_gateway.home)}
    cli = subprocess.Popen(
        [sys.executable, "-m", "wardgate.gateway.cli", "--config", str(cred_gateway.config), "creds", "connect",
         "--tenant", "acme", "--user", "frank", "--service", "connected", "--timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        assert cli.stdout is not None
        assert b"Open this URL" in cli.stdout.readline()
        url = cli.stdout.readline().decode().strip()
        assert "code_challenge_method=S256" in url and "code_verifier" not in url and "scope=repo+read" in url
        # The "user" approves: the authorization server redirects to the gateway's admin callback.
        page = requests.get(url, verify=str(upstream_ca_file), timeout=20)
        assert page.status_code == 200 and "connected" in page.text
        out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, err
    assert b"connected connected for acme/frank" in out
    # The state was single-use: replaying the callback is refused.
    replay = requests.get(page.url, timeout=10)
    assert replay.status_code == 400
    grant = _grant(cred_gateway, "frank", "connected")
    assert grant["access_token"].startswith("access-code-") and grant["refresh_token"].startswith("refresh-code-")
    path = f"/allowed/{uuid.uuid4()}"
    assert call(cred_gateway, cred_upstream.url(PORT["connected"], path), user="frank").status_code == 200
    assert auth_headers(cred_upstream.last(path).headers, "Authorization") == [f"Bearer {grant['access_token']}"]


def test_connect_callback_with_an_unknown_state_is_refused(cred_gateway: Gateway) -> None:
    response = requests.get(f"{cred_gateway.admin}/oauth/callback?state=forged&code=x", timeout=10)
    assert response.status_code == 400 and response.headers["X-Wardgate-Error"] == "oauth_state_invalid"
    unauthenticated = requests.post(f"{cred_gateway.admin}/v1/oauth/connect", json={}, timeout=10)
    assert unauthenticated.status_code == 401
    paths = requests.get(f"{cred_gateway.admin}/openapi.json", timeout=10).json()["paths"]
    assert {"/v1/oauth/connect", "/v1/oauth/connect/{state}", "/oauth/callback"} <= set(paths)


def test_an_idempotent_replay_is_the_scrubbed_response(cred_gateway: Gateway, cred_upstream: CredentialUpstream) -> None:
    """The response is scrubbed before Idempotency stores it, so a replay never carries the secret;
    the credential joins after the fingerprint, so the retry matches the first request."""
    path = f"/allowed/{uuid.uuid4()}"
    key = {"Idempotency-Key": f"idem-{uuid.uuid4()}"}
    first = call(cred_gateway, cred_upstream.url(PORT["query"], path + "?q=1"), headers=key)
    second = call(cred_gateway, cred_upstream.url(PORT["query"], path + "?q=1"), headers=key)
    assert first.status_code == second.status_code == 200
    assert second.headers.get("X-Wardgate-Replay") == "true", second.headers
    assert cred_upstream.count(path) == 1
    for response in (first, second):
        assert QUERY_KEY not in response.text and "api_key=[wardgate:scrubbed]" in response.text


def test_a_refused_response_is_replayed_not_resent(cred_gateway: Gateway, cred_upstream: CredentialUpstream) -> None:
    """The upstream saw the request before its answer was refused as uninspectable: a retry with the
    same Idempotency-Key gets the same refusal back and never reaches the upstream again."""
    path = f"/allowed/weird/{uuid.uuid4()}"
    headers = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    first = call(cred_gateway, cred_upstream.url(PORT["bearer"], path), headers=headers)
    again = call(cred_gateway, cred_upstream.url(PORT["bearer"], path), headers=headers)
    assert first.headers["X-Wardgate-Error"] == again.headers["X-Wardgate-Error"] == "response_uninspectable"
    assert again.headers.get("X-Wardgate-Replay") == "true"
    assert cred_upstream.count(path) == 1
