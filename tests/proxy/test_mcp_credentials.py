"""MCP with credential injection: the tool call is decided on its body, the user's credential is
injected on the way out, and an MCP server that echoes it back in its SSE stream has it scrubbed
before the agent sees it (official MCP SDK both sides, TLS upstream on loopback)."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.fastmcp import Context, FastMCP

from asgi_server import AsgiServer
from support import Gateway, start_gateway, write_tenant_policy
from wardgate.gateway.vault import KeySource, Vault

TOKEN = "mcp-canary-0123456789abcdef"


class TlsMcpServer:
    def __init__(self, ca: trustme.CA, folder: Path) -> None:
        self.seen: list[str] = []
        app = FastMCP("tls-loopback", host="127.0.0.1")

        @app.tool()
        def whoami(ctx: Context) -> str:
            authorization = ctx.request_context.request.headers.get("authorization", "")
            self.seen.append(authorization)
            return f"you sent {authorization}"

        cert = ca.issue_cert("localhost", "127.0.0.1")
        cert.private_key_pem.write_to_path(str(folder / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
        self._asgi = AsgiServer(app.streamable_http_app(), ssl_keyfile=str(folder / "key.pem"),
                                ssl_certfile=str(folder / "cert.pem"))
        self.port = self._asgi.port

    def start(self) -> None:
        self._asgi.start()

    def stop(self) -> None:
        self._asgi.stop()


@pytest.fixture(scope="module")
def tls_mcp(test_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsMcpServer]:
    server = TlsMcpServer(test_ca, tmp_path_factory.mktemp("mcp-tls"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cred_gateway(opa_binary: str, tmp_path_factory: pytest.TempPathFactory, upstream_ca_file: Path,
                 tls_mcp: TlsMcpServer) -> Iterator[Gateway]:
    policy = write_tenant_policy(tmp_path_factory.mktemp("mcp-cred-policy"), "mcpt",
                                 [{"host": "localhost", "methods": ["GET", "POST", "DELETE"]}])
    gw = start_gateway(tmp_path_factory.mktemp("mcp-cred-gateway"), policy_paths=[policy], upstream_ca=upstream_ca_file,
                       extra_config=f'\n[services.mcpsvc]\nhosts = ["localhost"]\nports = [{tls_mcp.port}]\n')
    gw.create_agent("tool-bot", "mcpt", ["write"])
    Vault(gw.settings.state_db, KeySource(gw.settings), create_keys=True).put("mcpt", "alice", "mcpsvc", "secret", TOKEN.encode())
    yield gw
    gw.stop()


def test_injected_credential_reaches_the_server_and_is_scrubbed_from_the_stream(
    cred_gateway: Gateway, tls_mcp: TlsMcpServer
) -> None:
    async def work() -> str:
        proxy = cred_gateway.proxy_with(cred_gateway.mint("tool-bot", user="alice", tenant="mcpt"))
        async with httpx.AsyncClient(proxy=proxy, verify=ssl.create_default_context(cafile=str(cred_gateway.ca_file)), timeout=30) as client:
            async with streamable_http_client(f"https://localhost:{tls_mcp.port}/mcp", http_client=client) as (read, write, _):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    result = await session.call_tool("whoami", {})
                    return result.content[0].text

    text = asyncio.run(work())
    assert f"Bearer {TOKEN}" in tls_mcp.seen
    assert TOKEN not in text and text.startswith("you sent ")
    records = [r for r in cred_gateway.records(wait_for=1) if r["mcp_tool"] == "whoami"]
    assert records and all(r["credential_service"] == "mcpsvc" for r in records)
    assert all(TOKEN not in json.dumps(r) for r in cred_gateway.records(wait_for=1))
