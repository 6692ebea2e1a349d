"""The read-only audit web page, in real headless Chromium against a real gateway's admin API."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from support import Gateway, Upstream, require

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    require("chromium (Debian package; make test installs it)", found is not None)
    assert found
    return found


def dom(chromium: str, url: str, tmp_path: Path) -> str:
    """The page's DOM after its script ran (fresh profile each time)."""
    profile = tmp_path / f"profile-{uuid.uuid4().hex[:8]}"
    done = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000",
                           "--dump-dom", url], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def api(gateway: Gateway, path: str) -> requests.Response:
    return requests.get(f"{gateway.admin}{path}", headers={"Authorization": f"Bearer {gateway.admin_token}"}, timeout=10)


def test_page_lists_filters_and_shows_one_record_with_its_verification(
    chromium: str, gateway: Gateway, upstream: Upstream, tmp_path: Path
) -> None:
    marker = uuid.uuid4().hex
    proxy = gateway.proxy_with(gateway.mint("acme-bot"))
    ok = requests.get(f"{upstream.http_url}/allowed/{marker}", proxies={"http": proxy}, timeout=10)
    denied = requests.get(f"{upstream.http_url}/nope/{marker}", proxies={"http": proxy}, timeout=10)
    assert (ok.status_code, denied.status_code) == (200, 403)
    records = gateway.records(ok.headers["X-Wardgate-Audit-Id"], wait_for=2)
    outcome = [r for r in records if r["kind"] == "outcome"][0]
    # The gateway signs an idle checkpoint about a second after traffic stops.
    deadline = time.monotonic() + 15
    while api(gateway, f"/v1/audit/records/{outcome['id']}").json()["verification"]["status"] != "verified":
        assert time.monotonic() < deadline, "no checkpoint ever covered the record"
        time.sleep(0.2)
    fragment = f"#token={quote(gateway.admin_token)}"

    listing = dom(chromium, f"{gateway.admin}/ui/audit?path={marker}{fragment}", tmp_path)
    assert listing.count(f'data-call-id="{ok.headers["X-Wardgate-Audit-Id"]}"') == 2
    assert f'data-call-id="{denied.headers["X-Wardgate-Audit-Id"]}"' in listing
    assert "3 record(s)" in listing

    only_denied = dom(chromium, f"{gateway.admin}/ui/audit?path={marker}&decision=deny{fragment}", tmp_path)
    assert "1 record(s)" in only_denied and "policy_denied" in only_denied
    assert ok.headers["X-Wardgate-Audit-Id"] not in only_denied

    detail = dom(chromium, f"{gateway.admin}/ui/audit?id={outcome['id']}{fragment}", tmp_path)
    assert 'data-status="verified"' in detail and f"/allowed/{marker}" in detail

    # Edit the record in the database: the page must say so. (Restored afterwards: the gateway is shared.)
    conn = sqlite3.connect(gateway.settings.audit_db, isolation_level=None, timeout=10)
    try:
        conn.execute("UPDATE audit_records SET status = 201 WHERE id = ?", (outcome["id"],))
        tampered = dom(chromium, f"{gateway.admin}/ui/audit?id={outcome['id']}{fragment}", tmp_path)
    finally:
        conn.execute("UPDATE audit_records SET status = 200 WHERE id = ?", (outcome["id"],))
        conn.close()
    assert 'data-status="invalid"' in tampered and "edited" in tampered

    anonymous = dom(chromium, f"{gateway.admin}/ui/audit", tmp_path)
    assert "an admin token is needed" in anonymous and outcome["id"] not in anonymous


def test_page_headers_and_record_endpoint(gateway: Gateway) -> None:
    page = requests.get(f"{gateway.admin}/ui/audit", timeout=10)
    assert page.status_code == 200 and "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert api(gateway, "/v1/audit/records/NOPE").status_code == 404
    assert requests.get(f"{gateway.admin}/v1/audit/records/NOPE", timeout=10).status_code == 401
