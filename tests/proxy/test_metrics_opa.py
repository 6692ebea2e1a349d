"""OPA on /metrics: stop the (external, real) OPA and the refusals are counted by reason; the managed
OPA's decisions reused for calls that agree on what the policy reads are counted too."""

from __future__ import annotations

import uuid

import requests

from audit_backends import agent_ready
from support import Gateway, OpaServer, Upstream, metric, opa_decisions_answered


def test_opa_errors_are_counted(gateway_on_external_opa: Gateway, external_opa: OpaServer, upstream: Upstream) -> None:
    gateway = gateway_on_external_opa
    agent_ready(gateway, upstream.http_url, "acme-bot")
    external_opa.kill()
    proxy = gateway.proxy_with(gateway.mint("acme-bot"))
    for _ in range(2):
        response = requests.get(f"{upstream.http_url}/allowed/{uuid.uuid4()}", proxies={"http": proxy}, timeout=10)
        assert response.status_code == 503 and response.headers["X-Wardgate-Error"] == "policy_unavailable"
    text = requests.get(f"{gateway.admin}/metrics", timeout=5).text
    assert 'wardgate_opa_errors_total{reason="policy_error"} 2' in text
    assert 'wardgate_calls_total{decision="error",status="503"} 2' in text


def test_calls_that_agree_on_what_the_policy_reads_are_decided_once(gateway: Gateway, upstream: Upstream) -> None:
    """The managed OPA is asked once for six calls that differ only in what the default policy never
    reads (token, time, query, headers); /metrics shows the reuse; a different path is asked anew."""
    path = f"/allowed/{uuid.uuid4()}"
    before = requests.get(f"{gateway.admin}/metrics", timeout=5).text
    asked_before = opa_decisions_answered(gateway.listeners["opa"])
    for n in range(6):
        proxy = gateway.proxy_with(gateway.mint("acme-bot"))
        response = requests.get(f"{upstream.http_url}{path}?n={n}", headers={"X-Call": str(n)},
                                proxies={"http": proxy}, timeout=10)
        assert response.status_code == 200
    denied = requests.get(f"{upstream.http_url}/private/{uuid.uuid4()}",
                          proxies={"http": gateway.proxy_with(gateway.mint("acme-bot"))}, timeout=10)
    assert denied.status_code == 403
    after = requests.get(f"{gateway.admin}/metrics", timeout=5).text
    assert metric(after, "wardgate_policy_cache_on") == 1
    assert opa_decisions_answered(gateway.listeners["opa"]) - asked_before == 2
    assert metric(after, "wardgate_policy_cache_hits_total") - metric(before, "wardgate_policy_cache_hits_total") == 5
    assert metric(after, "wardgate_policy_cache_misses_total") - metric(before, "wardgate_policy_cache_misses_total") == 2
