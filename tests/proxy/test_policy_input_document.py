"""The policy input is built as a plain dict for speed; it must stay exactly the documented PolicyInput."""

from __future__ import annotations

import pytest
from mitmproxy.test import tflow

from wardgate.gateway.identity import Principal
from wardgate.gateway.policy import McpInput, PolicyInput
from wardgate.proxy.call import call_of
from wardgate.proxy.egress import policy_input

PRINCIPAL = Principal(agent="bot", user="alice", tenant="acme", scopes=("read", "write"), token_id="t1",
                      issuer="wardgate", issued_at=0.0, expires_at=1.0)

CASES = {
    "plain": dict(),
    "query_and_headers": dict(path="/a/b?x=1&x=2&empty=&y=%20z",
                              headers=[("Accept", "a/b"), ("X-Many", "1"), ("x-many", "2"), ("Authorization", "Bearer s"),
                                       ("Cookie", "c=d"), ("X-Long", "v" * 3000)]),
    "credential": dict(credential="github"),
    "run_with_step_header": dict(run=True, headers=[("X-Wardgate-Step", "s-7")]),
    "run_without_step": dict(run=True),
    "run_with_call_step": dict(run=True, step="s-1"),
    "mcp_call": dict(mcp=McpInput(method="tools/call", tool="create_issue", arguments={"title": "x", "n": [1, {"a": None}]},
                                  server="https://mcp.example.com/mcp", protocol_version="2025-11-25")),
    "mcp_notification": dict(mcp=McpInput(method="notifications/initialized", kind="notification")),
    "https_upper_host": dict(scheme="https", host="API.Example.COM", port=8443),
    "no_path": dict(path=""),
}


def _principal(run: bool) -> Principal:
    import dataclasses

    return dataclasses.replace(PRINCIPAL, run="run-1") if run else PRINCIPAL


@pytest.mark.parametrize("case", list(CASES))
def test_dict_document_is_the_pydantic_document(case: str) -> None:
    spec = CASES[case]
    flow = tflow.tflow()
    request = flow.request
    request.scheme = spec.get("scheme", "http")
    request.host = spec.get("host", "api.example.com")
    request.port = spec.get("port", 80)
    request.path = spec.get("path", "/repos/acme/app")
    request.headers.clear()
    for name, value in spec.get("headers", [("Accept", "*/*")]):
        request.headers.add(name, value)
    call = call_of(flow)
    call.principal = _principal(spec.get("run", False))
    call.credential_service = spec.get("credential")
    call.mcp = spec.get("mcp")
    call.step = spec.get("step")

    document = policy_input(flow)

    validated = PolicyInput.model_validate(document)
    assert validated.model_dump(mode="json", exclude_none=True) == document
    assert "authorization" not in document["request"]["headers"] and "cookie" not in document["request"]["headers"]
