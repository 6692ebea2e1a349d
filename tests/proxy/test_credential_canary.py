"""The canary: a user's secret goes out on the wire and shows up in no sink wardgate writes.

A canary secret is stored through the CLI (stdin), then allowed, denied and failing calls carry
it (or its OAuth descendants). Afterwards every sink is searched for it and its derived forms:
the policy input (captured by OPA's own decision log), every file under the gateway's folders
(raw bytes of the SQLite databases including their WAL, logs at debug level), the admin API
(/metrics, audit records), CLI output, and every response the agent received.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
import trustme

from credential_upstream import CredentialUpstream
from support import Gateway, OpaServer, Upstream, free_port, start_gateway, write_tenant_policy
from wardgate.gateway.vault import KeySource, Vault

CANARY = "canary-7f3a9c/Q+e=5b21d0c4e8f6a"
QUERY_CANARY = "canaryq-0b9e7d6c5a4f3e2d1c0b"
SERVICES = ["bearer", "query", "holder", "oauth", "refreshfail"]


def forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    return [raw, base64.b64encode(raw), base64.urlsafe_b64encode(raw).rstrip(b"="), quote(secret, safe="").encode()]


@pytest.fixture(scope="module")
def canary_upstream(test_ca: trustme.CA) -> Iterator[CredentialUpstream]:
    server = CredentialUpstream(test_ca, len(SERVICES))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def untrusted(test_ca: trustme.CA) -> Iterator[Upstream]:
    server = Upstream(trustme.CA())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def decision_log(tmp_path_factory: pytest.TempPathFactory, opa_binary: str) -> Iterator[tuple[OpaServer, Path]]:
    """An external OPA that logs every decision with its full input to a file."""
    root = tmp_path_factory.mktemp("canary-opa")
    policy = write_tenant_policy(root / "data", "acme", [
        {"host": h, "methods": ["GET", "POST"], "paths": ["/allowed", "/oauth"]} for h in ("localhost", "127.0.0.1")
    ])
    repo_policies = Path(__file__).resolve().parents[2] / "policies"
    opa = OpaServer([repo_policies, policy])
    log = root / "decisions.log"
    handle = open(log, "wb")
    opa.process = subprocess.Popen(
        [opa_binary, "run", "--server", "--addr", f"127.0.0.1:{opa.port}", "--disable-telemetry",
         "--set", "decision_logs.console=true", "--ignore", "*_test.rego", str(repo_policies), str(policy)],
        stdout=handle, stderr=subprocess.STDOUT,
    )
    import time
    import urllib.request

    for _ in range(200):
        try:
            with urllib.request.urlopen(f"{opa.url}/health", timeout=1):
                break
        except OSError:
            time.sleep(0.05)
    yield opa, log
    opa.kill()
    handle.close()


def test_canary_reaches_the_upstream_and_no_sink(
    tmp_path: Path, decision_log: tuple[OpaServer, Path], canary_upstream: CredentialUpstream, untrusted: Upstream,
    upstream_ca_file: Path,
) -> None:
    opa, opa_log = decision_log
    up = canary_upstream
    dead_port = free_port()
    services = {
        "bearer": ("localhost", up.ports[0], "inspection_limit = 4096"),
        "query": ("localhost", up.ports[1], 'mechanism = "query"\nquery_param = "key"'),
        "holder": ("localhost", up.ports[2], 'mode = "placeholder"'),
        "oauth": ("localhost", up.ports[3], ""),
        "refreshfail": ("localhost", up.ports[4], ""),
        "dead": ("localhost", dead_port, ""),
        "untrusted": ("localhost", untrusted.https_port, ""),
    }
    config = "".join(f'[services.{n}]\nhosts = ["{h}"]\nports = [{p}]\n{extra}\n' for n, (h, p, extra) in services.items())
    gw = start_gateway(
        tmp_path / "gw", upstream_ca=upstream_ca_file, extra_config=config, up_args=["--log-level", "debug"],
        env={"WARDGATE_OPA__MODE": "external", "WARDGATE_OPA__URL": opa.url},
    )
    try:
        run_calls_and_search(gw, tmp_path, opa_log, up, untrusted)
    finally:
        gw.stop()
    # After shutdown too (the WAL has been checkpointed into the main files by now).
    search_files(tmp_path, [CANARY, QUERY_CANARY, *issued_tokens(up)])


def cli(gw: Gateway, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "WARDGATE_HOME": str(gw.home)}
    return subprocess.run([sys.executable, "-m", "wardgate.gateway.cli", "--config", str(gw.config), *args],
                          input=stdin, capture_output=True, env=env, timeout=60)


def issued_tokens(up: CredentialUpstream) -> list[str]:
    n = up.tokens.counter
    return [f"access-fresh-{i}-abcdefghij" for i in range(1, n + 1)] + [f"refresh-rotated-{i}-0123456789" for i in range(1, n + 1)] + [
        "refresh-canary-0123456789", "access-canary-expired-0123"]


def run_calls_and_search(gw: Gateway, tmp_path: Path, opa_log: Path, up: CredentialUpstream, untrusted: Upstream) -> None:
    gw.create_agent("acme-bot", "acme", ["read", "write"])
    outputs: list[bytes] = []
    # One credential through the CLI (stdin), the rest straight into the vault (a CLI start costs ~2 s).
    done = cli(gw, "creds", "put", "--tenant", "acme", "--user", "alice", "--service", "bearer", stdin=CANARY.encode())
    assert done.returncode == 0, done.stderr
    outputs += [done.stdout, done.stderr]
    vault = Vault(gw.settings.state_db, KeySource(gw.settings))
    for service, secret in [("query", QUERY_CANARY), ("holder", CANARY), ("dead", CANARY), ("untrusted", CANARY)]:
        vault.put("acme", "alice", service, "secret", secret.encode())
    up.tokens.valid_refresh.add("refresh-canary-0123456789")
    cid, csecret = up.tokens.client
    for service, refresh in [("oauth", "refresh-canary-0123456789"), ("refreshfail", "refresh-canary-revoked-000")]:
        grant = {"access_token": "access-canary-expired-0123", "refresh_token": refresh, "expires_at": 1,
                 "token_endpoint": up.url(0, "/oauth/token"), "client_id": cid, "client_secret": csecret}
        vault.put("acme", "alice", service, "oauth", json.dumps(grant).encode())
    vault.close()

    token = gw.mint("acme-bot", user="alice")
    proxy = gw.proxy_with(token)
    session = requests.Session()
    for _ in range(100):  # the gateway re-reads the agent registry at most every 0.2 s
        if session.get(up.plain_url("/allowed/probe"), proxies={"http": proxy}, timeout=10).status_code != 407:
            break
    replayed = up.url(0, f"/allowed/{uuid.uuid4()}")
    calls = [
        ("allowed, echoed", up.url(0, f"/allowed/{uuid.uuid4()}"), {}, 200),
        ("idempotent, stored", replayed, {"Idempotency-Key": "canary-1"}, 200),
        ("idempotent, replayed", replayed, {"Idempotency-Key": "canary-1"}, 200),
        ("allowed, gzip echo", up.url(0, f"/allowed/gzip/{uuid.uuid4()}"), {"Accept-Encoding": "gzip"}, 200),
        ("allowed, header echo", up.url(0, f"/allowed/header/{uuid.uuid4()}"), {}, 200),
        ("event stream echo", up.url(0, f"/allowed/sse/{uuid.uuid4()}"), {}, 200),
        ("streamed gzip echo", up.url(0, f"/allowed/bigecho-gzip/{uuid.uuid4()}"), {}, 200),
        ("denied by policy", up.url(0, f"/denied/{uuid.uuid4()}"), {}, 403),
        ("query parameter", up.url(1, f"/allowed/{uuid.uuid4()}?key=x"), {}, 200),
        ("placeholder", up.url(2, f"/allowed/{uuid.uuid4()}"), {"Authorization": "Bearer wardgate:holder"}, 200),
        ("placeholder elsewhere", up.url(1, f"/allowed/{uuid.uuid4()}"), {"X-Key": "wardgate:holder"}, 400),
        ("uninspectable", up.url(0, f"/allowed/weird/{uuid.uuid4()}"), {}, 502),
        ("upstream down", f"https://localhost:{gw.settings.services['dead'].ports[0]}/allowed/x", {}, 502),
        ("upstream TLS unverified", f"https://localhost:{untrusted.https_port}/allowed/{uuid.uuid4()}", {}, 502),
        ("oauth refreshed", up.url(3, f"/allowed/{uuid.uuid4()}"), {}, 200),
        ("oauth refresh fails", up.url(4, f"/allowed/{uuid.uuid4()}"), {}, 502),
    ]
    for name, url, headers, status in calls:
        # A fresh connection per call: each call stands alone in the sinks searched below.
        response = requests.get(url, headers=headers, proxies={"https": proxy, "http": proxy}, verify=str(gw.ca_file), timeout=20)
        assert response.status_code == status, (name, response.status_code, response.text)
        outputs.append(json.dumps(dict(response.headers)).encode() + response.content)

    # Positive controls: the canary did go out, and the sinks below do hold the calls.
    wire = json.dumps([(r.path, r.headers) for r in up.seen])
    assert CANARY in wire and QUERY_CANARY in wire and "access-fresh-1-abcdefghij" in wire
    admin = {"Authorization": f"Bearer {gw.admin_token}"}
    records = requests.get(f"{gw.admin}/v1/audit/records?limit=1000", headers=admin, timeout=10)
    assert len(records.json()["records"]) >= len(calls) * 2 - 6
    assert any(r["credential_service"] == "bearer" and r["scrub_count"] > 0 for r in records.json()["records"])
    outputs += [records.content, requests.get(f"{gw.admin}/metrics", timeout=10).content]
    outputs.append(cli(gw, "creds", "list", "--json").stdout)
    decisions = opa_log.read_bytes()
    assert b'"credential":{"service":"bearer"}' in decisions  # the decision log does capture the input

    secrets = [CANARY, QUERY_CANARY, *issued_tokens(up)]
    for secret in secrets:
        for form in forms(secret):
            for index, output in enumerate(outputs):
                assert form not in output, (secret, index)
            assert form not in decisions
    search_files(tmp_path, secrets)  # while running: the WAL files are still there
    assert any(p.name.endswith("-wal") for p in tmp_path.rglob("*")), "expected live WAL files to search"


def search_files(root: Path, secrets: list[str]) -> None:
    files = [p for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "audit.db" for p in files) and any(p.name == "gateway.log" for p in files)
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            for form in forms(secret):
                assert form not in data, (secret, str(path))
