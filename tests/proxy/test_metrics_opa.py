"""OPA errors show on /metrics: stop the (external, real) OPA and the refusals are counted by reason."""

from __future__ import annotations

import uuid
from pathlib import Path

import requests

from audit_backends import agent_ready
from support import OpaServer, POLICIES, Upstream, start_gateway


def test_opa_errors_are_counted(opa_binary: str, tmp_path: Path, acme_policy: Path, upstream: Upstream) -> None:
    opa = OpaServer([POLICIES, acme_policy])
    opa.start()
    gateway = start_gateway(tmp_path / "gw", policy_paths=[acme_policy],
                            env={"WARDGATE_OPA__MODE": "external", "WARDGATE_OPA__URL": opa.url})
    try:
        gateway.create_agent("acme-bot", "acme", ["read"])
        agent_ready(gateway, upstream.http_url, "acme-bot")
        opa.kill()
        proxy = gateway.proxy_with(gateway.mint("acme-bot"))
        for _ in range(2):
            response = requests.get(f"{upstream.http_url}/allowed/{uuid.uuid4()}", proxies={"http": proxy}, timeout=10)
            assert response.status_code == 503 and response.headers["X-Wardgate-Error"] == "policy_unavailable"
        text = requests.get(f"{gateway.admin}/metrics", timeout=5).text
        assert 'wardgate_opa_errors_total{reason="policy_error"} 2' in text
        assert 'wardgate_calls_total{decision="error",status="503"} 2' in text
    finally:
        gateway.stop()
        opa.kill()
