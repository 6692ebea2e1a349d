"""GatewayExchange: a request with an Idempotency-Key is sent upstream by the gateway itself, so its
answer is stored even when the agent leaves mid-call; what reaches the upstream is what was vetted."""

from __future__ import annotations

import base64
import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from counting import CountingUpstream
from support import Gateway, Upstream, free_port, start_gateway


def post(gw: Gateway, token: str, url: str, key: str, body: bytes, **kw: object) -> requests.Response:
    proxy = gw.proxy_with(token)
    headers = {"Idempotency-Key": key, "Content-Type": "application/json", **kw.pop("headers", {})}  # type: ignore[dict-item]
    return requests.post(url, data=body, headers=headers, proxies={"http": proxy, "https": proxy}, timeout=30, **kw)  # type: ignore[arg-type]


def test_an_agent_that_leaves_mid_call_gets_the_stored_answer_on_retry(
    gateway: Gateway, counting: CountingUpstream
) -> None:
    token = gateway.mint("acme-bot", scopes=["read", "write"])
    key, body = uuid.uuid4().hex, json.dumps({"amount": 3}).encode()
    counting.hold = True
    authority = f"127.0.0.1:{counting.port}"
    credentials = base64.b64encode(f"agent:{token}".encode()).decode()
    raw = (
        f"POST http://{authority}/allowed/charge HTTP/1.1\r\nHost: {authority}\r\n"
        f"Proxy-Authorization: Basic {credentials}\r\nIdempotency-Key: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", gateway.proxy_port), timeout=30) as agent:
        agent.sendall(raw)
        assert counting.arrived.wait(20)
    # The agent is gone while the upstream still holds the POST.
    counting.release()
    retry = post(gateway, token, f"{counting.url}/allowed/charge", key, body)
    assert retry.status_code == 201 and retry.headers["X-Wardgate-Replay"] == "true"
    assert retry.json()["charge"] == 1 and len(counting.posts) == 1
    original = retry.headers["X-Wardgate-Replay-Of"]
    outcomes = [r for r in gateway.records(original, wait_for=2) if r["kind"] == "outcome"]
    assert [(r["status"], r["error"], r["replay"]) for r in outcomes] == [(201, None, 0)]


def test_the_upstream_gets_the_agent_request_over_verified_tls_and_nothing_hop_by_hop(
    gateway: Gateway, upstream: Upstream
) -> None:
    token = gateway.mint("acme-bot", scopes=["read", "write"])
    key, path = uuid.uuid4().hex, f"/allowed/exchange/{uuid.uuid4().hex}?q=1"
    url = f"{upstream.https_url}{path}"
    headers = {"X-Agent": "kept", "Connection": "keep-alive, X-Hop", "X-Hop": "dropped"}
    first = post(gateway, token, url, key, b'{"a":1}', headers=headers, verify=str(gateway.ca_file))
    again = post(gateway, token, url, key, b'{"a":1}', headers=headers, verify=str(gateway.ca_file))
    assert first.status_code == again.status_code == 200
    assert again.headers["X-Wardgate-Replay"] == "true" and upstream.count(path) == 1
    seen = next(r for r in upstream.seen if r.path == path)
    assert seen.method == "POST" and seen.body == b'{"a":1}'
    assert seen.headers["Host"] == f"localhost:{upstream.https_port}"
    assert seen.headers["X-Agent"] == "kept" and seen.headers["Idempotency-Key"] == key
    assert "X-Hop" not in seen.headers and "Proxy-Authorization" not in seen.headers
    assert "User-Agent" in seen.headers  # the agent's own (requests), not one aiohttp made up
    assert seen.headers["User-Agent"].startswith("python-requests")


def test_an_upstream_never_reached_releases_the_claim(gateway: Gateway) -> None:
    token = gateway.mint("acme-bot", scopes=["read", "write"])
    key, url = uuid.uuid4().hex, f"http://127.0.0.1:{free_port()}/allowed/charge"
    for _ in range(2):  # the second attempt is sent again: nothing reached an upstream the first time
        response = post(gateway, token, url, key, b"{}")
        assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_error"
    outcomes = [r for r in gateway.records(response.headers["X-Wardgate-Audit-Id"], wait_for=2)
                if r["kind"] == "outcome"]
    assert [(r["status"], r["error"]) for r in outcomes] == [(502, "upstream_error")]


@pytest.fixture(scope="module")
def small_gateway(opa_binary: str, tmp_path_factory: pytest.TempPathFactory, acme_policy: Path) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("small"), policy_paths=[acme_policy],
                       extra_config="\n[idempotency]\nmax_response_bytes = 16\n")
    gw.create_agent("acme-bot", "acme", ["read", "write"])
    yield gw
    gw.stop()


def test_an_answer_too_large_to_keep_is_refused_and_never_sent_again(
    small_gateway: Gateway, counting: CountingUpstream
) -> None:
    token = small_gateway.mint("acme-bot", scopes=["read", "write"])
    key, url = uuid.uuid4().hex, f"{counting.url}/allowed/charge"
    first = post(small_gateway, token, url, key, b'{"amount": 1}')
    assert first.status_code == 502 and first.json()["error"]["code"] == "idempotency_response_too_large"
    retry = post(small_gateway, token, url, key, b'{"amount": 1}')
    assert retry.status_code == 409 and retry.json()["error"]["code"] == "idempotency_outcome_unknown"
    assert len(counting.posts) == 1
