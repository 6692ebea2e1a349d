"""Prometheus /metrics counts real calls; W3C traceparent reaches the upstream and the audit record."""

from __future__ import annotations

import re
import uuid

import pytest
import requests

from support import Gateway, Upstream, metric
from wardgate.proxy.trace import trace_id_of

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENTS = [
    (f"00-{TRACE}-00f067aa0ba902b7-01", TRACE),
    (f"01-{TRACE}-00f067aa0ba902b7-01-future", TRACE),
    (f"00-{TRACE}-00f067aa0ba902b7-01-extra", None),
    (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),
    (f"00-{TRACE}-{'0' * 16}-01", None),
    (f"ff-{TRACE}-00f067aa0ba902b7-01", None),
    (f"00-{TRACE.upper()}-00f067aa0ba902b7-01", None),
    ("garbage", None),
    (None, None),
]


@pytest.mark.parametrize(("header", "expected"), PARENTS)
def test_traceparent_parsing(header: str | None, expected: str | None) -> None:
    assert trace_id_of(header) == expected


def test_metrics_count_calls_and_traceparent_is_passed_and_recorded(gateway: Gateway, upstream: Upstream) -> None:
    before = requests.get(f"{gateway.admin}/metrics", timeout=5).text
    proxy = gateway.proxy_with(gateway.mint("acme-bot"))
    path = f"/allowed/{uuid.uuid4()}"
    sent = f"00-{TRACE}-00f067aa0ba902b7-01"
    ok = requests.get(f"{upstream.http_url}{path}", proxies={"http": proxy}, headers={"traceparent": sent}, timeout=10)
    assert ok.status_code == 200
    denied = requests.get(f"{upstream.http_url}/forbidden/{uuid.uuid4()}", proxies={"http": proxy}, timeout=10)
    assert denied.status_code == 403
    fresh = requests.get(f"{upstream.http_url}{path}/2", proxies={"http": proxy}, timeout=10)

    seen = {r.path: r for r in upstream.seen}
    assert seen[path].headers["traceparent"] == sent  # passed through unchanged
    generated = trace_id_of(seen[f"{path}/2"].headers["traceparent"])
    assert generated and generated != TRACE
    records = gateway.records(ok.headers["X-Wardgate-Audit-Id"], wait_for=2)
    assert {r["trace_id"] for r in records} == {TRACE}
    assert {r["trace_id"] for r in gateway.records(fresh.headers["X-Wardgate-Audit-Id"], wait_for=2)} == {generated}
    refusal = gateway.records(denied.headers["X-Wardgate-Audit-Id"], wait_for=1)
    assert refusal[0]["trace_id"] and len(refusal[0]["trace_id"]) == 32

    after = requests.get(f"{gateway.admin}/metrics", timeout=5).text
    assert metric(after, "wardgate_calls_total", decision="allow", status="200") >= metric(before, "wardgate_calls_total", decision="allow", status="200") + 2
    assert metric(after, "wardgate_calls_total", decision="deny", status="403") == metric(before, "wardgate_calls_total", decision="deny", status="403") + 1
    for stage in ("policy", "upstream", "total", "audit_commit"):
        assert metric(after, "wardgate_stage_latency_seconds_count", stage=stage) > metric(before, "wardgate_stage_latency_seconds_count", stage=stage)
    assert re.search(r'^wardgate_stage_latency_seconds_bucket\{stage="total",le="\+Inf"\} \d+$', after, re.M)
    assert "wardgate_audit_queue_depth " in after and "# TYPE wardgate_opa_errors_total counter" in after
    assert metric(after, "wardgate_audit_records_committed_total") > metric(before, "wardgate_audit_records_committed_total")
