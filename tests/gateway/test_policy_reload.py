"""Policy reloads with the real OPA: file changes and `wardgate policy reload` take effect, a policy
that does not compile is rejected with OPA's message while the previous one keeps serving, and
calls made throughout are never answered 503."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from support import Gateway, Upstream, opa_get, start_gateway, write_tenant_policy
from wardgate.gateway.opa_address import unix_socket

DEADLINE = 30.0


@pytest.fixture
def reload_gateway(opa_binary: str, tmp_path: Path) -> Iterator[tuple[Gateway, Path]]:
    data = write_tenant_policy(tmp_path / "data", "rl", [{"host": "127.0.0.1", "methods": ["GET"], "paths": ["/allowed"]}])
    # The steady load below is one agent calling as fast as it can: lift the per-agent rate limit,
    # which is not what this test is about (tests/proxy/test_limits.py is).
    gw = start_gateway(tmp_path / "gw", policy_paths=[data], env={
        "WARDGATE_OPA__WATCH_INTERVAL": "0.3",
        "WARDGATE_LIMITS__REQUESTS_PER_SECOND": "100000",
        "WARDGATE_LIMITS__BURST": "100000",
    })
    gw.create_agent("rl-bot", "rl", [])
    yield gw, data
    gw.stop()


def status(gateway: Gateway, upstream: Upstream, path: str) -> int:
    proxy = gateway.proxy_with(gateway.mint("rl-bot", tenant="rl"))
    return requests.get(f"{upstream.http_url}{path}", proxies={"http": proxy}, timeout=15).status_code


def until(condition, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE}s: {what}")
        time.sleep(0.1)


def cli_reload(gateway: Gateway) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "wardgate.gateway.cli", "--config", str(gateway.config), "--home", str(gateway.home),
         "policy", "reload"],
        capture_output=True, text=True, timeout=120, env=env, cwd=gateway.config.parent,
    )


def test_reload_keeps_serving_and_rejects_broken_policies(reload_gateway: tuple[Gateway, Path], upstream: Upstream) -> None:
    gateway, data = reload_gateway
    first_opa = gateway.listeners["opa"]
    private = f"/private/{uuid.uuid4()}"
    assert status(gateway, upstream, "/allowed/x") == 200
    assert status(gateway, upstream, private) == 403

    seen: list[int] = []
    stop = threading.Event()

    def steady_calls() -> None:  # bounded: at most 400 calls, loopback only
        token = gateway.mint("rl-bot", tenant="rl")
        with requests.Session() as session:
            session.proxies = {"http": gateway.proxy_with(token)}
            for _ in range(400):
                if stop.is_set():
                    return
                seen.append(session.get(f"{upstream.http_url}/allowed/steady", timeout=15).status_code)

    load = threading.Thread(target=steady_calls)
    load.start()
    try:
        # 1. A data file change is picked up.
        write_tenant_policy(data, "rl", [{"host": "127.0.0.1", "methods": ["GET"], "paths": ["/allowed", "/private"]}])
        until(lambda: status(gateway, upstream, private) == 200, "widened policy served")

        # 2. A policy that does not compile is rejected; the previous one keeps serving.
        broken = data / "broken.rego"
        broken.write_text("package wardgate.authz\n\ndecision := {\n")
        status_file = gateway.settings.run_dir / "policy.json"
        until(lambda: json.loads(status_file.read_text())["state"] == "rejected", "broken policy rejected")
        assert "broken.rego" in json.loads(status_file.read_text())["error"]
        assert status(gateway, upstream, private) == 200
        refused = cli_reload(gateway)
        assert refused.returncode == 2 and "policy_rejected" in refused.stderr and "broken.rego" in refused.stderr
        assert status(gateway, upstream, "/allowed/x") == 200

        # 3. Fixed and narrowed again, loaded on request.
        broken.unlink()
        write_tenant_policy(data, "rl", [{"host": "127.0.0.1", "methods": ["GET"], "paths": ["/allowed"]}])
        done = cli_reload(gateway)
        assert done.returncode == 0, done.stderr
        assert "reloaded" in done.stdout
        until(lambda: status(gateway, upstream, private) == 403, "narrowed policy served")

        # listeners.json says where the OPA now serving is: a socket of its own in the private run folder.
        listeners = json.loads((gateway.settings.run_dir / "listeners.json").read_text())
        assert listeners["opa"] != first_opa
        assert Path(unix_socket(listeners["opa"]) or "").parent == gateway.settings.run_dir
        assert opa_get(listeners["opa"], "/health")[0] == 200
        until(lambda: not Path(unix_socket(first_opa) or "").exists(), "the first OPA gone after its grace, socket and all")
    finally:
        stop.set()
        load.join(60)
    assert seen and set(seen) == {200}, f"calls during reloads answered {sorted(set(seen))}"
    assert "policy_unavailable" not in gateway.log.read_text()
