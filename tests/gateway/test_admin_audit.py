"""The admin API's audit query: same filters as the CLI, cursor pagination, tenant scope."""

from __future__ import annotations

import time
import uuid

import requests

from support import Gateway, Upstream


def get(gateway: Gateway, route: str, **params: str) -> requests.Response:
    return requests.get(f"{gateway.admin}{route}", params=params, timeout=10,
                        headers={"Authorization": f"Bearer {gateway.admin_token}"})


def test_audit_records_paginate_filter_and_scope_by_tenant(gateway: Gateway, upstream: Upstream) -> None:
    marker = uuid.uuid4().hex
    proxy = gateway.proxy_with(gateway.mint("acme-bot"))
    for number in range(3):
        response = requests.get(f"{upstream.http_url}/allowed/{marker}/{number}", proxies={"http": proxy}, timeout=10)
        assert response.status_code == 200
    # Outcomes are written after the response: wait until all six records are there.
    for _ in range(100):
        everything = get(gateway, "/v1/audit/records", path=marker, limit="100").json()["records"]
        if len(everything) == 6:
            break
        time.sleep(0.05)
    assert len(everything) == 6

    pages, cursor = [], None
    while True:
        params = {"path": marker, "limit": "4", **({"cursor": cursor} if cursor else {})}
        body = get(gateway, "/v1/audit/records", **params).json()
        pages.append([r["id"] for r in body["records"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [4, 2]
    assert [i for page in pages for i in page] == [r["id"] for r in everything]  # newest first, no overlap

    outcomes = get(gateway, "/v1/audit/records", path=marker, kind="outcome", status="200", method="get").json()["records"]
    assert len(outcomes) == 3 and {r["agent"] for r in outcomes} == {"acme-bot"}

    scoped = get(gateway, "/v1/tenants/acme/audit/records", path=marker).json()["records"]
    assert len(scoped) == 6
    assert get(gateway, "/v1/tenants/globex/audit/records", path=marker).json()["records"] == []
    conflict = get(gateway, "/v1/tenants/globex/audit/records", tenant="acme")
    assert conflict.status_code == 400 and conflict.json()["error"]["code"] == "tenant_mismatch"
    bad = get(gateway, "/v1/audit/records", since="yesterday")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_time"
    anonymous = requests.get(f"{gateway.admin}/v1/tenants/acme/audit/records", timeout=10)
    assert anonymous.status_code == 401
