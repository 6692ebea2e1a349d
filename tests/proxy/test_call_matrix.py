"""One call end to end through a real gateway, from real clients, over plain HTTP and CONNECT+TLS.

{http, https} × {no token, bad token, allowed, denied} × {curl, requests, Node fetch/undici}.
Every case checks the status the client saw, whether the upstream was reached, and the audit record.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from support import REPO, Gateway, Upstream, require

NODE_DIR = REPO / "tests" / "node"


@dataclass
class Result:
    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    error: str = ""

    def header(self, name: str) -> str | None:
        return {k.lower(): v for k, v in self.headers.items()}.get(name.lower())


def via_curl(method: str, url: str, proxy: str, ca: Path, tmp: Path) -> Result:
    curl = shutil.which("curl")
    require("curl", curl is not None)
    head, body = tmp / "h", tmp / "b"
    done = subprocess.run(
        [curl, "-sS", "-X", method, "-x", proxy, "--cacert", str(ca), "-D", str(head), "-o", str(body),
         "-w", "%{http_code} %{http_connect}", "--max-time", "15", url],
        capture_output=True, text=True, timeout=30,
    )
    code, connect = done.stdout.split()
    headers: dict[str, str] = {}
    if head.exists():
        for line in head.read_text().splitlines()[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip()] = value.strip()
    status = int(code) if code != "000" else (int(connect) if connect != "000" else None)
    return Result(status, headers, body.read_text() if body.exists() else "", done.stderr)


def via_requests(method: str, url: str, proxy: str, ca: Path, tmp: Path) -> Result:
    try:
        response = requests.request(method, url, proxies={"http": proxy, "https": proxy}, verify=str(ca), timeout=15)
    except requests.exceptions.ProxyError as exc:
        # requests surfaces a refused CONNECT only as an exception naming the status.
        return Result(407 if "407" in str(exc) else None, error=str(exc))
    return Result(response.status_code, dict(response.headers), response.text)


def via_node(method: str, url: str, proxy: str, ca: Path, tmp: Path) -> Result:
    node = shutil.which("node")
    require("node", node is not None)
    require("undici (make node)", (NODE_DIR / "node_modules" / "undici").exists())
    done = subprocess.run(
        [node, str(NODE_DIR / "client.mjs"), method, url, proxy],
        capture_output=True, text=True, timeout=30, env={**os.environ, "NODE_EXTRA_CA_CERTS": str(ca)},
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if "error" in out:
        # undici tunnels every request through CONNECT and reports a refused tunnel as an error.
        return Result(407 if "407" in out["error"] else None, error=out["error"])
    return Result(out["status"], out["headers"], out["body"])


CLIENTS = {"curl": via_curl, "requests": via_requests, "node": via_node}


def refusals(gateway: Gateway, code: str) -> int:
    return sum(1 for r in gateway.records(wait_for=0) if r["kind"] == "refusal" and r["error"] == code)


def target(upstream: Upstream, scheme: str, path: str) -> str:
    return f"{upstream.http_url if scheme == 'http' else upstream.https_url}{path}"


@pytest.fixture(params=sorted(CLIENTS))
def client(request: pytest.FixtureRequest):  # noqa: ANN201
    return CLIENTS[request.param]


@pytest.fixture(params=["http", "https"])
def scheme(request: pytest.FixtureRequest) -> str:
    return request.param


def test_no_token_is_refused_with_407(gateway: Gateway, upstream: Upstream, client, scheme: str, tmp_path: Path) -> None:  # noqa: ANN001
    path = f"/allowed/{uuid.uuid4()}"
    before = refusals(gateway, "identity_missing")
    result = client("GET", target(upstream, scheme, path), gateway.proxy, gateway.ca_file, tmp_path)
    assert result.status == 407, result
    if result.headers:
        assert result.header("X-Wardgate-Error") == "identity_missing"
        assert "Bearer" in (result.header("Proxy-Authenticate") or "")
        if result.body:  # curl keeps a refused CONNECT's headers but not its body
            assert json.loads(result.body)["error"]["audit_id"] == result.header("X-Wardgate-Audit-Id")
    assert upstream.count(path) == 0
    assert refusals(gateway, "identity_missing") == before + 1


def test_bad_token_is_refused_with_407(gateway: Gateway, upstream: Upstream, client, scheme: str, tmp_path: Path) -> None:  # noqa: ANN001
    path = f"/allowed/{uuid.uuid4()}"
    good = gateway.mint("acme-bot")
    forged = good[:-6] + ("AAAAAA" if not good.endswith("AAAAAA") else "BBBBBB")
    before = refusals(gateway, "identity_invalid")
    result = client("GET", target(upstream, scheme, path), gateway.proxy_with(forged), gateway.ca_file, tmp_path)
    assert result.status == 407, result
    if result.headers:
        assert result.header("X-Wardgate-Error") == "identity_invalid"
        assert forged not in result.body
    assert upstream.count(path) == 0
    assert refusals(gateway, "identity_invalid") == before + 1


def test_allowed_call_reaches_upstream_and_is_audited(
    gateway: Gateway, upstream: Upstream, client, scheme: str, tmp_path: Path  # noqa: ANN001
) -> None:
    path = f"/allowed/{uuid.uuid4()}"
    token = gateway.mint("acme-bot", user="bob")
    result = client("GET", target(upstream, scheme, path), gateway.proxy_with(token), gateway.ca_file, tmp_path)
    assert result.status == 200, result
    assert json.loads(result.body)["path"] == path
    assert upstream.count(path) == 1
    seen = next(r for r in upstream.seen if r.path == path)
    assert not any(h.lower() == "proxy-authorization" for h in seen.headers)
    call_id = result.header("X-Wardgate-Audit-Id")
    assert call_id
    records = gateway.records(call_id, wait_for=2)
    assert [r["kind"] for r in records] == ["intent", "outcome"]
    intent, outcome = records
    assert (intent["agent"], intent["user"], intent["tenant"], intent["decision"]) == ("acme-bot", "bob", "acme", "allow")
    assert (intent["host"], intent["path"], intent["scheme"]) == ("127.0.0.1" if scheme == "http" else "localhost", path, scheme)
    assert outcome["status"] == 200 and outcome["latency_total_ms"] > 0


def test_denied_call_never_reaches_upstream(
    gateway: Gateway, upstream: Upstream, client, scheme: str, tmp_path: Path  # noqa: ANN001
) -> None:
    path = f"/private/{uuid.uuid4()}"
    token = gateway.mint("acme-bot")
    result = client("GET", target(upstream, scheme, path), gateway.proxy_with(token), gateway.ca_file, tmp_path)
    assert result.status == 403, result
    assert result.header("X-Wardgate-Error") == "policy_denied"
    body = json.loads(result.body)["error"]
    assert body["reasons"] == ["destination_not_allowed"]
    assert upstream.count(path) == 0
    (record,) = gateway.records(body["audit_id"])
    assert (record["kind"], record["decision"], record["status"], record["path"]) == ("refusal", "deny", 403, path)
