"""Report mode through a real gateway: a denial is recorded as would_deny and the call proceeds."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import requests

from support import Upstream, start_gateway


def test_report_mode_records_would_deny_and_forwards(opa_binary: str, tmp_path: Path, upstream: Upstream) -> None:
    data = tmp_path / "data" / "wardgate" / "config" / "tenants"
    for tenant, report in (("trial", True), ("strict", False)):
        (data / tenant).mkdir(parents=True)
        (data / tenant / "data.json").write_text(json.dumps({
            "allow": [{"host": "127.0.0.1", "methods": ["GET"], "paths": ["/allowed"]}], "report_only": report,
        }))
    gateway = start_gateway(tmp_path / "gw", policy_paths=[tmp_path / "data"])
    try:
        gateway.create_agent("trial-bot", "trial", [])
        gateway.create_agent("strict-bot", "strict", [])
        path = f"/private/{uuid.uuid4()}"
        results = {}
        for agent, tenant in (("trial-bot", "trial"), ("strict-bot", "strict")):
            proxy = gateway.proxy_with(gateway.mint(agent, tenant=tenant))
            results[tenant] = requests.get(f"{upstream.http_url}{path}", proxies={"http": proxy}, timeout=15)
        assert results["trial"].status_code == 200 and results["strict"].status_code == 403
        assert upstream.count(path) == 1
        intent = gateway.records(results["trial"].headers["X-Wardgate-Audit-Id"], wait_for=2)[0]
        assert (intent["kind"], intent["decision"], intent["reasons"]) == ("intent", "would_deny", ["destination_not_allowed"])
    finally:
        gateway.stop()
