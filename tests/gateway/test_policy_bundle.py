"""`wardgate policy bundle`: an OPA serving only the bundle decides as the policy folders do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from support import POLICIES, free_port

DOCUMENT = {
    "version": 1,
    "identity": {"agent": "demo-agent", "user": "alice", "tenant": "demo", "scopes": [], "token_id": "t", "issuer": "wardgate"},
    "request": {"method": "GET", "scheme": "http", "host": "127.0.0.1", "port": 8089, "path": "/", "query": {}, "headers": {}},
    "time": {"unix": 0, "rfc3339": "1970-01-01T00:00:00Z", "weekday": 3, "hour": 0},
}


def decide(url: str, document: dict) -> dict:
    body = json.dumps({"input": document}).encode()
    request = urllib.request.Request(f"{url}/v1/data/wardgate/authz/decision", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())["result"]


def test_bundle_serves_the_same_decisions(opa_binary: str, tmp_path: Path) -> None:
    config = tmp_path / "wardgate.toml"
    config.write_text(f'version = 1\n\n[opa]\npaths = ["{POLICIES}"]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDGATE_")}
    built = subprocess.run(
        [sys.executable, "-m", "wardgate.gateway.cli", "--config", str(config), "--home", str(tmp_path / "home"),
         "policy", "bundle", "-o", str(tmp_path / "b.tar.gz")],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert built.returncode == 0, built.stderr
    port = free_port()
    opa = subprocess.Popen([opa_binary, "run", "--server", "--addr", f"127.0.0.1:{port}", "--bundle", str(tmp_path / "b.tar.gz")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "bundle OPA did not start"
                time.sleep(0.05)
        assert decide(url, DOCUMENT) == {"allow": True, "reasons": ["destination_allowed"]}
        elsewhere = {**DOCUMENT, "request": {**DOCUMENT["request"], "host": "evil.test"}}
        assert decide(url, elsewhere) == {"allow": False, "reasons": ["destination_not_allowed"]}
    finally:
        opa.kill()
        opa.wait()
