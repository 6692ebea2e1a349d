"""`wardgate policy explain AUDIT_ID`: a recorded call's input re-evaluated by the real OPA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import requests

from support import POLICIES, Gateway, Upstream, write_tenant_policy


def explain(gateway: Gateway, tmp_path: Path, policy_paths: list[Path], audit_id: str, *extra: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / f"explain-{uuid.uuid4().hex}.toml"
    config.write_text(f"version = 1\n\n[opa]\npaths = {json.dumps([str(p) for p in policy_paths])}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "wardgate.gateway.cli", "--config", str(config), "--home", str(gateway.home),
         "policy", "explain", audit_id, *extra],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )


def call(gateway: Gateway, upstream: Upstream, path: str) -> str:
    token = gateway.mint("acme-bot", user="bob")
    proxy = gateway.proxy_with(token)
    response = requests.get(f"{upstream.http_url}{path}", proxies={"http": proxy}, timeout=15)
    return response.headers["X-Wardgate-Audit-Id"]


def test_explain_shows_what_a_policy_change_does(
    gateway: Gateway, upstream: Upstream, acme_policy: Path, tmp_path: Path
) -> None:
    denied = call(gateway, upstream, f"/private/{uuid.uuid4()}")
    gateway.records(denied, wait_for=1)

    same = explain(gateway, tmp_path, [POLICIES, acme_policy], denied)
    assert same.returncode == 0, same.stderr
    assert "recorded: deny" in same.stdout and "unchanged" in same.stdout
    assert "decided under policy revision" in same.stdout and "(same files)" in same.stdout

    widened = write_tenant_policy(tmp_path / "widened", "acme", [{"host": "127.0.0.1", "methods": ["GET"]}])
    changed = explain(gateway, tmp_path, [POLICIES, widened], denied)
    assert changed.returncode == 0, changed.stderr
    assert "CHANGED: this call would now be allowed" in changed.stdout

    report = json.loads(explain(gateway, tmp_path, [POLICIES, widened], denied, "--json").stdout)
    assert report["changed"] is True
    assert report["recorded"] == {"allow": False, "reasons": ["destination_not_allowed"], "decision": "deny", "error": "policy_denied"}
    assert report["now"]["allow"] is True
    assert report["policy_revision"]["recorded"] != report["policy_revision"]["now"]
    assert report["input"]["identity"]["user"] == "bob"
    assert "proxy-authorization" not in report["input"]["request"]["headers"]


def test_explain_an_allowed_call_and_unknown_ids(gateway: Gateway, upstream: Upstream, acme_policy: Path, tmp_path: Path) -> None:
    allowed = call(gateway, upstream, f"/allowed/{uuid.uuid4()}")
    gateway.records(allowed, wait_for=2)
    narrowed = write_tenant_policy(tmp_path / "narrowed", "acme", [{"host": "example.org"}])
    done = explain(gateway, tmp_path, [POLICIES, narrowed], allowed)
    assert "recorded: allow" in done.stdout and "CHANGED: this call would now be denied" in done.stdout
    missing = explain(gateway, tmp_path, [POLICIES, acme_policy], "nope")
    assert missing.returncode == 2 and "audit_record_not_found" in missing.stderr
