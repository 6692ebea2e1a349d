"""An MCP call while OPA is down: a JSON-RPC error naming policy_unavailable, nothing forwarded,
and no arguments in the audit trail (nobody said which are sensitive)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from support import POLICIES, OpaServer, Upstream, start_gateway, write_tenant_policy

CALL = {"jsonrpc": "2.0", "id": "c-1", "method": "tools/call", "params": {"name": "login", "arguments": {"password": "pw-9931"}}}


def test_policy_unavailable_is_a_json_rpc_error(opa_binary: str, tmp_path: Path, upstream: Upstream) -> None:
    data = write_tenant_policy(tmp_path / "data", "acme", [{"host": "127.0.0.1", "methods": ["POST"]}])
    opa = OpaServer([POLICIES, data])
    opa.start()
    gateway = start_gateway(
        tmp_path / "gw", policy_paths=[data], env={"WARDGATE_OPA__MODE": "external", "WARDGATE_OPA__URL": opa.url}
    )
    try:
        gateway.create_agent("bot", "acme", [])
        proxy = gateway.proxy_with(gateway.mint("bot"))
        headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
        path = "/mcp-unavailable"
        with httpx.Client(proxy=proxy, timeout=15) as client:
            assert client.post(f"{upstream.http_url}{path}", json=CALL, headers=headers).status_code == 200
            opa.kill()
            response = client.post(f"{upstream.http_url}{path}", json=CALL, headers=headers)
        assert response.status_code == 200 and response.headers["X-Wardgate-Error"] == "policy_unavailable"
        reply = response.json()
        assert reply["id"] == "c-1" and reply["error"]["code"] == -32063
        assert reply["error"]["data"]["code"] == "policy_unavailable"
        assert upstream.count(path) == 1
        (record,) = gateway.records(reply["error"]["data"]["audit_id"])
        assert (record["kind"], record["decision"], record["mcp_tool"], record["mcp_arguments"]) == ("refusal", "error", "login", None)
        assert "pw-9931" not in json.dumps(record)
    finally:
        gateway.stop()
        opa.kill()
