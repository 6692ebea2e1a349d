"""An MCP tool call that needs approval: the client sees a JSON-RPC error naming the approval, and
once a human approves, the re-sent call (new JSON-RPC id, as MCP clients send it) goes out once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from support import Upstream, start_gateway, write_tenant_policy

HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}


def tool_call(request_id: int) -> dict:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": "create_payment", "arguments": {"amount_cents": 90000}}}


def test_approval_of_an_mcp_call_survives_a_new_json_rpc_id(opa_binary: str, tmp_path: Path, upstream: Upstream) -> None:
    data = write_tenant_policy(tmp_path / "data", "appr", [{"host": "127.0.0.1", "methods": ["POST"], "require_approval": True}])
    gateway = start_gateway(tmp_path / "gw", policy_paths=[data])
    try:
        gateway.create_agent("pay-bot", "appr", [])
        proxy = gateway.proxy_with(gateway.mint("pay-bot", tenant="appr"))
        url = f"{upstream.http_url}/mcp-approval"
        with httpx.Client(proxy=proxy, timeout=15) as client:
            parked = client.post(url, json=tool_call(1), headers=HEADERS)
            assert parked.status_code == 200
            error = parked.json()["error"]
            assert parked.json()["id"] == 1 and error["code"] == -32060 and error["data"]["code"] == "approval_required"
            approval_id = parked.headers["X-Wardgate-Approval-Id"]
            assert approval_id in error["message"]
            assert upstream.count("/mcp-approval") == 0

            env = {**{k: v for k, v in os.environ.items() if not k.startswith("WARDGATE_")}, "WARDGATE_HOME": str(gateway.home)}
            approved = subprocess.run(
                [sys.executable, "-m", "wardgate.gateway.cli", "--config", str(gateway.config), "approvals", "approve", approval_id],
                capture_output=True, text=True, timeout=60, env=env,
            )
            assert approved.returncode == 0, approved.stderr

            released = client.post(url, json=tool_call(2), headers=HEADERS)
        assert released.status_code == 200 and "X-Wardgate-Error" not in released.headers, released.text
        assert upstream.count("/mcp-approval") == 1
        assert json.loads(upstream.seen[-1].body)["id"] == 2
    finally:
        gateway.stop()
