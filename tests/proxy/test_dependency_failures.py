"""OPA or the upstream failing mid-run: the call fails closed with the documented code, and recovers."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest
import requests

from support import Gateway, OpaServer, Upstream, free_port, start_gateway
from support import get_through as get


def until_status(gateway: Gateway, token: str, url: str, status: int, within: float = 20.0) -> requests.Response:
    deadline = time.monotonic() + within
    while True:
        response = get(gateway, token, url)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_opa_killed_mid_run_fails_closed_then_recovers(
    gateway_on_external_opa: Gateway, external_opa: OpaServer, upstream: Upstream, scheme: str
) -> None:
    gw = gateway_on_external_opa
    token = gw.mint("acme-bot")
    base = upstream.http_url if scheme == "http" else upstream.https_url
    assert get(gw, token, f"{base}/allowed/before").status_code == 200

    external_opa.kill()
    path = f"/allowed/{uuid.uuid4()}"
    refused = get(gw, token, f"{base}{path}")
    assert refused.status_code == 503
    assert refused.headers["X-Wardgate-Error"] == "policy_unavailable"
    assert refused.json()["error"]["reasons"] == ["policy_error"]
    assert upstream.count(path) == 0
    (record,) = gw.records(refused.headers["X-Wardgate-Audit-Id"])
    assert (record["kind"], record["decision"], record["status"], record["error"]) == ("refusal", "error", 503, "policy_unavailable")

    external_opa.start()  # same port
    assert until_status(gw, token, f"{base}/allowed/after", 200).status_code == 200


def test_managed_opa_is_restarted_after_it_dies(gateway: Gateway, upstream: Upstream) -> None:
    token = gateway.mint("acme-bot")
    assert get(gateway, token, f"{upstream.http_url}/allowed/x").status_code == 200
    killed = int(gateway.live_listeners()["opa_pid"])
    os.kill(killed, signal.SIGKILL)
    refused = until_status(gateway, token, f"{upstream.http_url}/allowed/x", 503, within=5)
    assert refused.headers["X-Wardgate-Error"] == "policy_unavailable"
    assert until_status(gateway, token, f"{upstream.http_url}/allowed/x", 200).status_code == 200
    # run/listeners.json names the OPA now serving, not the one that died
    now = gateway.live_listeners()
    assert int(now["opa_pid"]) != killed and Path(f"/proc/{now['opa_pid']}/exe").resolve().name == "opa"


def test_a_damaged_listeners_file_does_not_stop_the_opa_restarts(opa_binary: str, tmp_path: Path, acme_policy: Path,
                                                                  upstream_ca_file: Path, upstream: Upstream) -> None:
    """run/listeners.json is rewritten when OPA changes; if that cannot be done (here: the file is
    not JSON any more), it is logged, and OPA is still restarted and calls are decided again."""
    gw = start_gateway(tmp_path, policy_paths=[acme_policy], upstream_ca=upstream_ca_file)
    try:
        gw.create_agent("acme-bot", "acme", ["read"])
        token = gw.mint("acme-bot")
        assert until_status(gw, token, f"{upstream.http_url}/allowed/x", 200).status_code == 200
        killed = int(gw.live_listeners()["opa_pid"])
        (gw.settings.run_dir / "listeners.json").write_text("{")
        os.kill(killed, signal.SIGKILL)
        assert until_status(gw, token, f"{upstream.http_url}/allowed/x", 503, within=5).status_code == 503
        assert until_status(gw, token, f"{upstream.http_url}/allowed/x", 200).status_code == 200
        assert "cannot rewrite" in gw.log.read_text()
    finally:
        gw.stop()


def test_unreachable_upstream_is_502_in_the_wardgate_shape(gateway: Gateway) -> None:
    token = gateway.mint("acme-bot")
    response = get(gateway, token, f"http://127.0.0.1:{free_port()}/allowed/x")
    assert response.status_code == 502
    assert response.headers["X-Wardgate-Error"] == "upstream_error"
    assert response.json()["error"]["code"] == "upstream_error"
    deadline = time.monotonic() + 5
    while True:  # outcomes are committed just after the response is sent
        outcomes = [r for r in gateway.records(wait_for=0) if r["kind"] == "outcome" and r["error"] == "upstream_error"]
        if outcomes or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert outcomes and outcomes[-1]["status"] == 502
