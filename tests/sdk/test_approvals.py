"""Human approval through a real gateway: parked calls, the CLI and admin API deciding, a run that
waits across a kill -9 and restart, and the approved call released exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests

from counting import CountingUpstream
from support import Gateway, start_gateway, write_tenant_policy

AGENT = Path(__file__).with_name("three_step_agent.py")


@pytest.fixture(scope="module")
def approval_gateway(opa_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    rules = [
        {"host": "127.0.0.1", "methods": ["GET", "POST"], "paths": ["/allowed"]},
        {"host": "127.0.0.1", "methods": ["POST"], "paths": ["/approve"], "require_approval": True},
    ]
    policy = write_tenant_policy(tmp_path_factory.mktemp("approval-policy"), "acme", rules)
    gw = start_gateway(tmp_path_factory.mktemp("approval-gateway"), policy_paths=[policy])
    gw.create_agent("acme-bot", "acme", ["read", "write"])
    yield gw
    gw.stop()


def cli(gateway: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("WARDGATE_")}, "WARDGATE_HOME": str(gateway.home)}
    return subprocess.run([sys.executable, "-m", "wardgate.gateway.cli", "--config", str(gateway.config), *args],
                          capture_output=True, text=True, timeout=60, env=env)


def approvals_for(gateway: Gateway, run_id: str, state: str | None = None) -> list[dict]:
    done = cli(gateway, "approvals", "list", "--json", *(["--state", state] if state else []))
    assert done.returncode == 0, done.stderr
    return [a for a in json.loads(done.stdout) if a["run"] == run_id]


def refusals(gateway: Gateway, run_id: str) -> int:
    return sum(1 for r in gateway.records(wait_for=0) if r["run"] == run_id and r["error"] == "approval_required")


def wait_until(predicate, what: str, timeout: float = 30.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def agent(gateway: Gateway, store: str, run_id: str, upstream: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(AGENT), store, run_id, gateway.admin, gateway.admin_token, gateway.listeners["proxy"],
         str(gateway.ca_file), upstream, "none", "/approve/charge"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_approval_waits_across_a_restart_and_releases_the_call_once(
    approval_gateway: Gateway, counting: CountingUpstream, tmp_path: Path
) -> None:
    gw, store, run_id = approval_gateway, f"sqlite:///{tmp_path}/runs.db", f"run-{uuid.uuid4().hex[:8]}"
    first = agent(gw, store, run_id, counting.url)
    [pending] = wait_until(lambda: approvals_for(gw, run_id, "pending"), "a pending approval")
    assert pending["method"] == "POST" and pending["path"] == "/approve/charge" and pending["step"] == "1:charge"
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    assert counting.posts == []

    before = refusals(gw, run_id)
    second = agent(gw, store, run_id, counting.url)
    # The restarted run re-sends the same request and waits on the same approval.
    wait_until(lambda: refusals(gw, run_id) > before, "the resumed run to wait")
    assert [a["id"] for a in approvals_for(gw, run_id)] == [pending["id"]]
    decided = cli(gw, "approvals", "approve", pending["id"], "--note", "ok")
    assert decided.returncode == 0 and decided.stdout.startswith("approved"), decided.stderr
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == {"amount": 7, "charge": 1}
    assert len(counting.posts) == 1
    assert [a["state"] for a in approvals_for(gw, run_id)] == ["released"]
    again = cli(gw, "approvals", "approve", pending["id"])
    assert again.returncode == 2 and "approval_not_pending" in again.stderr


def test_denied_approval_fails_the_call_without_reaching_the_upstream(
    approval_gateway: Gateway, counting: CountingUpstream, tmp_path: Path
) -> None:
    gw, store, run_id = approval_gateway, f"sqlite:///{tmp_path}/runs.db", f"run-{uuid.uuid4().hex[:8]}"
    running = agent(gw, store, run_id, counting.url)
    [pending] = wait_until(lambda: approvals_for(gw, run_id, "pending"), "a pending approval")
    assert cli(gw, "approvals", "deny", pending["id"]).returncode == 0
    _, err = running.communicate(timeout=60)
    assert running.returncode != 0 and "approval_denied" in err
    assert counting.posts == []


def test_admin_api_decides_and_unkeyed_calls_are_released_once(
    approval_gateway: Gateway, counting: CountingUpstream
) -> None:
    gw = approval_gateway
    proxy = gw.proxy_with(gw.mint("acme-bot", scopes=["read", "write"]))
    admin = {"Authorization": f"Bearer {gw.admin_token}"}

    def send() -> requests.Response:
        return requests.post(f"{counting.url}/approve/charge", json={"n": 1},
                             proxies={"http": proxy}, timeout=30)

    parked = send()
    assert parked.status_code == 403 and parked.json()["error"]["code"] == "approval_required"
    approval_id = parked.headers["X-Wardgate-Approval-Id"]
    assert send().headers["X-Wardgate-Approval-Id"] == approval_id  # the same call finds the same approval
    listed = httpx.get(f"{gw.admin}/v1/approvals", params={"state": "pending"}, headers=admin, timeout=10).json()
    assert approval_id in [a["id"] for a in listed["approvals"]]
    decided = httpx.post(f"{gw.admin}/v1/approvals/{approval_id}/approve", json={"by": "ops"}, headers=admin,
                         timeout=10)
    assert decided.status_code == 200 and decided.json()["state"] == "approved"
    assert send().status_code == 201
    parked_again = send()  # released once: the same unkeyed call needs a new approval
    assert parked_again.status_code == 403 and parked_again.headers["X-Wardgate-Approval-Id"] != approval_id
    assert len(counting.posts) == 1
    assert httpx.get(f"{gw.admin}/v1/approvals/nope", headers=admin, timeout=10).status_code == 404
