"""Exactly-once through a real gateway: Idempotency-Key replay, reuse, scope, in-flight, audit."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator

import pytest
import requests

from counting import CountingUpstream
from support import Gateway


def post(gateway: Gateway, token: str, url: str, key: str | None, body: dict) -> requests.Response:
    headers = {"Idempotency-Key": key} if key else {}
    proxy = gateway.proxy_with(token)
    return requests.post(url, json=body, headers=headers, proxies={"http": proxy, "https": proxy}, timeout=30)


def test_retry_with_the_same_key_is_replayed_without_reaching_the_upstream(
    gateway: Gateway, counting: CountingUpstream
) -> None:
    token = gateway.mint("acme-bot", scopes=["read", "write"])
    key = uuid.uuid4().hex
    first = post(gateway, token, f"{counting.url}/allowed/charge", key, {"amount": 5})
    second = post(gateway, token, f"{counting.url}/allowed/charge", key, {"amount": 5})
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json() and first.json()["key"] == key
    assert "X-Wardgate-Replay" not in first.headers and second.headers["X-Wardgate-Replay"] == "true"
    assert second.headers["X-Wardgate-Replay-Of"] == first.headers["X-Wardgate-Audit-Id"]
    assert second.headers["X-Wardgate-Audit-Id"] != first.headers["X-Wardgate-Audit-Id"]
    assert len(counting.posts) == 1
    replayed = [r for r in gateway.records(second.headers["X-Wardgate-Audit-Id"], wait_for=2) if r["kind"] == "outcome"]
    original = [r for r in gateway.records(first.headers["X-Wardgate-Audit-Id"], wait_for=2) if r["kind"] == "outcome"]
    assert replayed[0]["replay"] == 1 and replayed[0]["idempotency_key"] == key and replayed[0]["status"] == 201
    assert original[0]["replay"] == 0 and original[0]["idempotency_key"] == key


def test_same_key_different_request_is_refused_422(gateway: Gateway, counting: CountingUpstream) -> None:
    token = gateway.mint("acme-bot", scopes=["read", "write"])
    key = uuid.uuid4().hex
    assert post(gateway, token, f"{counting.url}/allowed/charge", key, {"amount": 5}).status_code == 201
    reused = post(gateway, token, f"{counting.url}/allowed/charge", key, {"amount": 6})
    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    assert len(counting.posts) == 1


def test_keys_are_scoped_to_the_caller(gateway: Gateway, counting: CountingUpstream) -> None:
    key = uuid.uuid4().hex
    for user in ("alice", "bob"):
        token = gateway.mint("acme-bot", user=user, scopes=["read", "write"])
        response = post(gateway, token, f"{counting.url}/allowed/charge", key, {"amount": 5})
        assert response.status_code == 201 and "X-Wardgate-Replay" not in response.headers
    assert len(counting.posts) == 2


def test_without_a_key_every_request_goes_through(gateway: Gateway, counting: CountingUpstream) -> None:
    token = gateway.mint("acme-bot", scopes=["read", "write"])
    for _ in range(2):
        assert post(gateway, token, f"{counting.url}/allowed/charge", None, {"amount": 5}).status_code == 201
    assert len(counting.posts) == 2


def test_invalid_key_is_refused(gateway: Gateway, counting: CountingUpstream) -> None:
    token = gateway.mint("acme-bot", scopes=["read", "write"])
    response = post(gateway, token, f"{counting.url}/allowed/charge", "x" * 300, {"amount": 5})
    assert response.status_code == 400 and response.json()["error"]["code"] == "idempotency_key_invalid"
    assert counting.posts == []


def test_a_retry_while_the_first_is_in_flight_waits_for_it(gateway: Gateway, counting: CountingUpstream) -> None:
    token = gateway.mint("acme-bot", scopes=["read", "write"])
    key = uuid.uuid4().hex
    counting.hold = True
    results: dict[str, requests.Response] = {}

    def send(name: str) -> None:
        results[name] = post(gateway, token, f"{counting.url}/allowed/charge", key, {"amount": 9})

    first = threading.Thread(target=send, args=("first",))
    first.start()
    assert counting.arrived.wait(20)
    second = threading.Thread(target=send, args=("second",))
    second.start()
    # The retry is waiting once its intent is recorded (EgressPolicy runs before Idempotency).
    intents = []
    for _ in range(200):
        intents = [r for r in gateway.records(wait_for=0) if r["idempotency_key"] is None and r["kind"] == "intent"
                   and r["path"] == "/allowed/charge" and r["port"] == counting.port]
        if len(intents) >= 2:
            break
        threading.Event().wait(0.05)
    assert len(intents) >= 2
    counting.release()
    first.join(30)
    second.join(30)
    assert results["first"].status_code == results["second"].status_code == 201
    assert results["second"].headers.get("X-Wardgate-Replay") == "true"
    assert json.loads(results["first"].content) == json.loads(results["second"].content)
    assert len(counting.posts) == 1


def test_a_claim_left_by_a_dead_gateway_process_is_an_unknown_outcome(
    gateway: Gateway, counting: CountingUpstream
) -> None:
    import socket
    import subprocess
    import sys
    import time

    from wardgate.gateway.idempotency import IdempotencyStore, fingerprint

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    key, body = uuid.uuid4().hex, json.dumps({"amount": 5}).encode()
    store = IdempotencyStore(gateway.home / "idempotency.db")
    print_ = fingerprint("POST", "http", "127.0.0.1", counting.port, "/allowed/charge", "application/json", body)
    store.claim("acme\x00acme-bot\x00alice", key, print_, f"{socket.gethostname()}:{dead.pid}:0", "C0", time.time(), 60)
    store.close()
    token = gateway.mint("acme-bot", scopes=["read", "write"])
    response = post(gateway, token, f"{counting.url}/allowed/charge", key, {"amount": 5})
    assert response.status_code == 409 and response.json()["error"]["code"] == "idempotency_outcome_unknown"
    assert counting.posts == []


@pytest.fixture(scope="module")
def impatient_gateway(
    opa_binary: str, tmp_path_factory: pytest.TempPathFactory, acme_policy
) -> Iterator[Gateway]:
    """A gateway that waits only briefly for an in-flight first attempt."""
    from support import start_gateway

    gw = start_gateway(tmp_path_factory.mktemp("impatient"), policy_paths=[acme_policy],
                       extra_config='\n[idempotency]\nin_flight_wait = "300ms"\n')
    gw.create_agent("acme-bot", "acme", ["read", "write"])
    yield gw
    gw.stop()


def test_a_retry_that_outwaits_the_wait_gets_409_and_no_second_call(
    impatient_gateway: Gateway, counting: CountingUpstream
) -> None:
    gw = impatient_gateway
    token = gw.mint("acme-bot", scopes=["read", "write"])
    key = uuid.uuid4().hex
    counting.hold = True
    results: dict[str, requests.Response] = {}
    first = threading.Thread(target=lambda: results.setdefault(
        "first", post(gw, token, f"{counting.url}/allowed/charge", key, {"amount": 1})))
    first.start()
    try:
        assert counting.arrived.wait(20)
        retry = post(gw, token, f"{counting.url}/allowed/charge", key, {"amount": 1})
        assert retry.status_code == 409 and retry.json()["error"]["code"] == "idempotency_in_flight"
    finally:
        counting.release()
        first.join(30)
    assert results["first"].status_code == 201
    assert len(counting.posts) == 1
    after = post(gw, token, f"{counting.url}/allowed/charge", key, {"amount": 1})
    assert after.headers.get("X-Wardgate-Replay") == "true" and len(counting.posts) == 1
