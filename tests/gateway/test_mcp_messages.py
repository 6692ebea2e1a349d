"""Strict parsing of MCP messages, header/body agreement, redaction and tools/list filtering: tables."""

from __future__ import annotations

import json

import pytest

from wardgate.gateway.errors import WardgateError
from wardgate.gateway.mcp import (
    HEADER_MISMATCH,
    PARSE_ERROR,
    POLICY_DENIED,
    SseSplitter,
    error_reply,
    filter_tools,
    looks_like_mcp,
    parse_body,
    redact,
    to_message,
)
from wardgate.gateway.errors import PolicyDenied

CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "search", "arguments": {"q": "x"}}}
NEW = {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "search"}
OLD = {"mcp-protocol-version": "2025-11-25"}


def parse(body: bytes | str, headers: dict[str, str] | None = None, **limits: int):
    raw = body.encode() if isinstance(body, str) else body
    value = parse_body(raw, max_bytes=limits.get("max_bytes", 4096), max_depth=limits.get("max_depth", 16))
    return to_message(value, headers or {})


@pytest.mark.parametrize(
    ("body", "headers", "code"),
    [
        ("x" * 5000, {}, "mcp_body_too_large"),
        (b"\xff\xfe{}", {}, "mcp_body_invalid"),
        ("{not json", {}, "mcp_body_invalid"),
        ('{"jsonrpc":"2.0","id":1,"method":"ping","params":{"n":NaN}}', {}, "mcp_body_invalid"),
        ('{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"x"}}', {}, "mcp_duplicate_key"),
        ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}', {}, "mcp_duplicate_key"),
        ('{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":' + "[" * 40 + "]" * 40 + "}}", {}, "mcp_body_too_deep"),
        ("[" * 100000 + "]" * 100000, {}, "mcp_body_too_large"),
        (json.dumps([CALL]), OLD, "mcp_batch_not_allowed"),
        (json.dumps([CALL]), NEW, "mcp_batch_not_allowed"),
        ('{"jsonrpc":"1.0","id":1,"method":"ping"}', {}, "mcp_message_invalid"),
        ('{"jsonrpc":"2.0","id":null,"method":"ping"}', {}, "mcp_message_invalid"),
        ('{"jsonrpc":"2.0","id":true,"method":"ping"}', {}, "mcp_message_invalid"),
        ('{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}', {}, "mcp_message_invalid"),
        ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}', {}, "mcp_message_invalid"),
        ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":[1]}}', {}, "mcp_message_invalid"),
        ('{"jsonrpc":"2.0","id":1,"result":{},"error":{}}', {}, "mcp_message_invalid"),
        # 2026-07-28: Mcp-Method / Mcp-Name are required and must agree with the body.
        (json.dumps(CALL), {"mcp-protocol-version": "2026-07-28"}, "mcp_header_mismatch"),
        (json.dumps(CALL), {**NEW, "mcp-method": "tools/list"}, "mcp_header_mismatch"),
        (json.dumps(CALL), {**NEW, "mcp-name": "delete_repo"}, "mcp_header_mismatch"),
        (json.dumps(CALL), {k: v for k, v in NEW.items() if k != "mcp-name"}, "mcp_header_mismatch"),
        (json.dumps(CALL), {**NEW, "mcp-name": "=?base64?!!!?="}, "mcp_header_mismatch"),
        # Any revision: a header that is present must not disagree with the body.
        (json.dumps(CALL), {**OLD, "mcp-name": "delete_repo"}, "mcp_header_mismatch"),
        (json.dumps({**CALL, "params": {**CALL["params"], "_meta": {"io.modelcontextprotocol/protocolVersion": "2025-11-25"}}}),
         NEW, "mcp_header_mismatch"),
    ],
)
def test_refused(body: str | bytes, headers: dict[str, str], code: str) -> None:
    with pytest.raises(WardgateError) as caught:
        parse(body, headers)
    assert caught.value.code == code
    assert caught.value.status in (400, 413)


@pytest.mark.parametrize(
    ("body", "headers", "kind", "method", "tool"),
    [
        (json.dumps(CALL), NEW, "request", "tools/call", "search"),
        (json.dumps(CALL), OLD, "request", "tools/call", "search"),
        (json.dumps(CALL), {}, "request", "tools/call", "search"),
        (json.dumps(CALL), {**NEW, "mcp-name": "=?base64?c2VhcmNo?="}, "request", "tools/call", "search"),
        ('{"jsonrpc":"2.0","method":"notifications/initialized"}', OLD, "notification", "notifications/initialized", None),
        ('{"jsonrpc":"2.0","id":"a","method":"tools/list","params":{}}',
         {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/list"}, "request", "tools/list", None),
        ('{"jsonrpc":"2.0","id":3,"result":{"action":"accept"}}', OLD, "response", None, None),
    ],
)
def test_accepted(body: str, headers: dict[str, str], kind: str, method: str | None, tool: str | None) -> None:
    message = parse(body, headers)
    assert (message.kind, message.method, message.tool) == (kind, method, tool)


def test_looks_like_mcp_only_for_mcp_methods() -> None:
    assert looks_like_mcp(CALL)
    assert looks_like_mcp([{"jsonrpc": "2.0", "id": 1, "method": "eth_call"}, CALL])
    assert not looks_like_mcp({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"})
    assert not looks_like_mcp({"name": "tools/call"})


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        ([], {"user": "a", "password": "p", "auth": {"token": "t", "scheme": "x"}}),
        (["password"], {"user": "a", "password": "[redacted]", "auth": {"token": "t", "scheme": "x"}}),
        (["auth.token", "missing", "user.deeper"], {"user": "a", "password": "p", "auth": {"token": "[redacted]", "scheme": "x"}}),
    ],
)
def test_redact(paths: list[str], expected: dict) -> None:
    original = {"user": "a", "password": "p", "auth": {"token": "t", "scheme": "x"}}
    assert redact(original, paths) == expected
    assert original["auth"]["token"] == "t"


def test_error_reply_is_json_rpc_with_the_same_id() -> None:
    reply = error_reply(PolicyDenied("no", reasons=["mcp_tool_not_allowed"]), "A1", 7)
    body = json.loads(reply.body)
    assert reply.status == 200 and reply.headers["X-Wardgate-Error"] == "policy_denied"
    assert body["id"] == 7 and body["error"]["code"] == POLICY_DENIED
    assert body["error"]["data"] == {"code": "policy_denied", "reasons": ["mcp_tool_not_allowed"], "audit_id": "A1"}
    mismatch = error_reply(WardgateError("x", code="mcp_header_mismatch"), "A2", None)
    assert json.loads(mismatch.body)["error"]["code"] == HEADER_MISMATCH
    invalid = error_reply(WardgateError("x", code="mcp_body_invalid"), "A3", None)
    assert json.loads(invalid.body)["error"]["code"] == PARSE_ERROR


def test_filter_tools_and_sse_split() -> None:
    message = {"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "a"}, {"name": "b"}], "nextCursor": "c"}}
    assert filter_tools(message, {"b"})["result"] == {"tools": [{"name": "b"}], "nextCursor": "c"}
    splitter = SseSplitter()
    assert splitter.feed(b"event: message\r\ndata: {\"a\":") == []
    (event,) = splitter.feed(b"1}\r\n\r\nid: 2")
    assert event.data == '{"a":1}' and splitter.rest() == b"id: 2"
