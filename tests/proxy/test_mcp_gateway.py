"""MCP through a real gateway: the official MCP Python SDK as client and server on loopback.

The server is FastMCP (Streamable HTTP, SSE responses by default, revision 2025-11-25 in SDK 1.x);
the client is the SDK's ClientSession with httpx pointed at the gateway as its proxy. Revision
2026-07-28 requests (Mcp-Method / Mcp-Name headers) are sent as raw HTTP, which is all the
gateway sees of them anyway.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.fastmcp import Context, FastMCP
from mcp.shared.exceptions import McpError

from asgi_server import AsgiServer
from support import Gateway, start_gateway

TOOLS = {"search", "delete_repo", "login", "drop_tables", "wait_for_go"}


class McpServer:
    """A FastMCP app under uvicorn in its own thread; records which tools actually ran."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, dict[str, Any]]] = []
        self.go = threading.Event()
        app = FastMCP("loopback", host="127.0.0.1")

        @app.tool()
        def search(q: str) -> str:
            self.ran.append(("search", {"q": q}))
            return f"found {q}"

        @app.tool()
        def delete_repo(name: str) -> str:
            self.ran.append(("delete_repo", {"name": name}))
            return f"deleted {name}"

        @app.tool()
        def login(user: str, password: str) -> str:
            self.ran.append(("login", {"user": user}))
            return f"hello {user}"

        @app.tool()
        def drop_tables() -> str:
            self.ran.append(("drop_tables", {}))
            return "dropped"

        @app.tool()
        async def wait_for_go(ctx: Context) -> str:
            # Answers "go" only if the client saw the progress event before the result: the
            # SSE stream must flow through the gateway, not be buffered until it ends.
            await ctx.report_progress(1, 2, "waiting for go")
            seen = await anyio.to_thread.run_sync(self.go.wait, 20)
            return "go" if seen else "stream was buffered"

        self._asgi = AsgiServer(app.streamable_http_app())
        self.port = self._asgi.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> None:
        self._asgi.start()

    def stop(self) -> None:
        self._asgi.stop()


@pytest.fixture(scope="module")
def mcp_server() -> Iterator[McpServer]:
    server = McpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mcp_gateway(opa_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data = tmp_path_factory.mktemp("mcp-policy")
    tenant = data / "wardgate" / "config" / "tenants" / "mcpco"
    tenant.mkdir(parents=True)
    tenant.joinpath("data.json").write_text(json.dumps({
        "allow": [{"host": "127.0.0.1", "methods": ["GET", "POST", "DELETE"]}],
        "mcp_tools": [
            {"tool": "search"},
            {"tool": "wait_for_go"},
            {"tool": "delete_repo", "users": ["alice"]},
            {"tool": "login", "redact": ["password"]},
        ],
    }))
    gw = start_gateway(tmp_path_factory.mktemp("mcp-gateway"), policy_paths=[data])
    gw.create_agent("tool-bot", "mcpco", [])
    yield gw
    gw.stop()


async def session_for(gateway: Gateway, server: McpServer, user: str):  # noqa: ANN201
    token = gateway.mint("tool-bot", user=user, tenant="mcpco")
    client = httpx.AsyncClient(proxy=gateway.proxy_with(token), timeout=httpx.Timeout(30, read=60))
    return client, streamable_http_client(server.url, http_client=client)


async def with_session(gateway: Gateway, server: McpServer, user: str, work):  # noqa: ANN001, ANN201
    client, transport = await session_for(gateway, server, user)
    async with client, transport as (read, write, _), ClientSession(read, write) as session:
        await session.initialize()
        return await work(session)


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


@pytest.mark.parametrize(("user", "visible"), [
    ("alice", {"search", "delete_repo", "login", "wait_for_go"}),
    ("bob", {"search", "login", "wait_for_go"}),
])
def test_tools_list_shows_only_callable_tools(mcp_gateway: Gateway, mcp_server: McpServer, user: str, visible: set[str]) -> None:
    async def work(session: ClientSession) -> set[str]:
        return {tool.name for tool in (await session.list_tools()).tools}

    assert run(with_session(mcp_gateway, mcp_server, user, work)) == visible


def test_allowed_tool_call_runs_and_is_audited(mcp_gateway: Gateway, mcp_server: McpServer) -> None:
    async def work(session: ClientSession):  # noqa: ANN202
        return await session.call_tool("search", {"q": "needle-41"})

    result = run(with_session(mcp_gateway, mcp_server, "bob", work))
    assert not result.isError and result.content[0].text == "found needle-41"
    assert ("search", {"q": "needle-41"}) in mcp_server.ran
    intents = [r for r in mcp_gateway.records(wait_for=1) if r["mcp_tool"] == "search" and r["kind"] == "intent"]
    assert any(json.loads(r["mcp_arguments"]) == {"q": "needle-41"} and r["mcp_method"] == "tools/call" for r in intents)


@pytest.mark.parametrize(("user", "tool"), [("bob", "delete_repo"), ("alice", "drop_tables")])
def test_denied_tool_call_is_a_json_rpc_error_the_client_surfaces(
    mcp_gateway: Gateway, mcp_server: McpServer, user: str, tool: str
) -> None:
    async def work(session: ClientSession):  # noqa: ANN202
        try:
            await session.call_tool(tool, {"name": "prod"} if tool == "delete_repo" else {})
        except McpError as raised:  # what the host application hands to the model
            return raised
        return None

    raised = run(with_session(mcp_gateway, mcp_server, user, work))
    assert isinstance(raised, McpError)
    error = raised.error
    assert error.code == -32060 and "policy_denied" in error.message
    assert error.data["code"] == "policy_denied" and error.data["reasons"] == ["mcp_tool_not_allowed"]
    assert tool not in {name for name, _ in mcp_server.ran}
    (record,) = mcp_gateway.records(error.data["audit_id"])
    assert (record["kind"], record["decision"], record["mcp_tool"]) == ("refusal", "deny", tool)


def test_sensitive_arguments_are_redacted_in_the_audit_trail(mcp_gateway: Gateway, mcp_server: McpServer) -> None:
    async def work(session: ClientSession):  # noqa: ANN202
        return await session.call_tool("login", {"user": "carol", "password": "hunter2-secret"})

    assert run(with_session(mcp_gateway, mcp_server, "bob", work)).content[0].text == "hello carol"
    rows = [r for r in mcp_gateway.records(wait_for=1) if r["mcp_tool"] == "login" and r["kind"] == "intent"]
    assert rows and all(json.loads(r["mcp_arguments"]) == {"user": "carol", "password": "[redacted]"} for r in rows)
    assert "hunter2-secret" not in mcp_gateway.settings.audit_db.read_bytes().decode("latin-1")


def test_sse_responses_stream_through(mcp_gateway: Gateway, mcp_server: McpServer) -> None:
    mcp_server.go.clear()

    async def progress(done: float, total: float | None, message: str | None) -> None:
        mcp_server.go.set()

    async def work(session: ClientSession):  # noqa: ANN202
        return await session.call_tool("wait_for_go", {}, progress_callback=progress)

    assert run(with_session(mcp_gateway, mcp_server, "bob", work)).content[0].text == "go"


def raw_post(gateway: Gateway, server: McpServer, body: bytes, headers: dict[str, str]) -> httpx.Response:
    token = gateway.mint("tool-bot", user="alice", tenant="mcpco")
    base = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    with httpx.Client(proxy=gateway.proxy_with(token), timeout=15) as client:
        return client.post(server.url, content=body, headers={**base, **headers})


CALL = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "search", "arguments": {"q": "raw"}}}
NEW = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "search"}


@pytest.mark.parametrize(("body", "headers", "status", "rpc", "code"), [
    (json.dumps(CALL), {**NEW, "Mcp-Name": "drop_tables"}, 400, -32020, "mcp_header_mismatch"),
    (json.dumps(CALL), {"MCP-Protocol-Version": "2026-07-28"}, 400, -32020, "mcp_header_mismatch"),
    ('{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"search","name":"drop_tables"}}',
     {}, 400, -32700, "mcp_duplicate_key"),
    (json.dumps([CALL]), {"MCP-Protocol-Version": "2025-11-25"}, 400, -32600, "mcp_batch_not_allowed"),
    # No MCP headers at all: the JSON-RPC body shape still makes it MCP.
    (json.dumps({**CALL, "params": {"name": "drop_tables"}}), {"Accept": "application/json"}, 200, -32060, "policy_denied"),
    (json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}),
     {}, 400, -32600, "mcp_body_too_deep"),
])
def test_malformed_or_denied_raw_requests_never_reach_the_server(
    mcp_gateway: Gateway, mcp_server: McpServer, body: str, headers: dict[str, str], status: int, rpc: int, code: str
) -> None:
    before = list(mcp_server.ran)
    response = raw_post(mcp_gateway, mcp_server, body.encode(), headers)
    assert response.status_code == status, response.text
    assert response.headers["X-Wardgate-Error"] == code
    reply = response.json()
    assert reply["jsonrpc"] == "2.0" and reply["error"]["code"] == rpc
    assert reply["error"]["data"]["code"] == code
    assert reply["error"]["data"]["audit_id"] == response.headers["X-Wardgate-Audit-Id"]
    assert mcp_server.ran == before


def test_matching_2026_headers_pass(mcp_gateway: Gateway, mcp_server: McpServer) -> None:
    # FastMCP in SDK 1.x speaks 2025-11-25 and refuses the newer version, but only after the
    # gateway let the call through: the refusal comes from the server, not from wardgate.
    response = raw_post(mcp_gateway, mcp_server, json.dumps(CALL).encode(), NEW)
    assert "X-Wardgate-Error" not in response.headers
    assert response.headers.get("X-Wardgate-Audit-Id")
