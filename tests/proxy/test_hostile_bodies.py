"""Compressed bombs through a real gateway: a few hundred KB that inflate to 300 MiB are passed on
or refused, never inflated. Measured by the gateway process's peak RSS (VmHWM), which grew by
about twice the inflated size when the outcome record's usage extraction and MCP's body parsing
decoded with mitmproxy's get_content."""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import brotli
import pytest
import requests
import zstandard
from aiohttp import web

from support import Gateway, LoopbackServer, start_gateway

INFLATED = 300 << 20
ALLOWED_RISE = 100 << 20  # the gateway's peak RSS may grow by this much for a bomb that inflates to 300 MiB


def bombs() -> dict[str, bytes]:
    zeros = bytes(INFLATED)
    return {"gzip": gzip.compress(zeros, 9), "br": brotli.compress(zeros, quality=5),
            "zstd": zstandard.ZstdCompressor().compress(zeros)}


@pytest.fixture(scope="module")
def compressed() -> dict[str, bytes]:
    return bombs()


@pytest.fixture(scope="module")
def bomber(compressed: dict[str, bytes]) -> Iterator[str]:
    """An upstream whose JSON answers are bombs, in the coding the path names."""

    async def answer(request: web.Request) -> web.Response:
        coding = request.match_info["coding"]
        return web.Response(body=compressed[coding], headers={"Content-Encoding": coding, "Content-Type": "application/json"})

    async def swallow(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": {}})

    def build() -> web.Application:
        app = web.Application(client_max_size=16 << 20)
        app.router.add_get("/allowed/bomb/{coding}", answer)
        app.router.add_post("/allowed/mcp", swallow)
        return app

    server = LoopbackServer(build, [None])
    (port,) = server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="module")
def fresh(opa_binary: str, tmp_path_factory: pytest.TempPathFactory, acme_policy: Path, upstream_ca_file: Path) -> Iterator[Gateway]:
    """A gateway of its own, so that its peak RSS is this module's doing."""
    gw = start_gateway(tmp_path_factory.mktemp("hostile-bodies"), policy_paths=[acme_policy], upstream_ca=upstream_ca_file)
    gw.create_agent("acme-bot", "acme", ["read", "write"])
    yield gw
    gw.stop()


def reset_peak_rss(gateway: Gateway) -> int:
    """Start the gateway's peak RSS afresh (Linux: 5 to clear_refs), so that each test sees its own."""
    Path(f"/proc/{gateway.process.pid}/clear_refs").write_text("5")
    return peak_rss(gateway)


def peak_rss(gateway: Gateway) -> int:
    for line in Path(f"/proc/{gateway.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def proxies(gateway: Gateway) -> dict[str, str]:
    return {"http": gateway.proxy_with(gateway.mint("acme-bot", scopes=["read", "write"]))}


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_a_bomb_from_an_upstream_reaches_the_agent_as_sent_and_is_not_inflated(
    fresh: Gateway, bomber: str, compressed: dict[str, bytes], coding: str
) -> None:
    before = reset_peak_rss(fresh)
    with requests.get(f"{bomber}/allowed/bomb/{coding}", proxies=proxies(fresh), stream=True, timeout=30,
                      headers={"Accept-Encoding": "gzip, br, zstd"}) as response:
        assert response.status_code == 200
        assert response.raw.read(decode_content=False) == compressed[coding]
        call_id = response.headers["X-Wardgate-Audit-Id"]
    outcome = next(record for record in fresh.records(call_id, wait_for=2) if record["kind"] == "outcome")
    assert (outcome["status"], outcome["bytes_out"], outcome["usage"]) == (200, len(compressed[coding]), None)
    assert peak_rss(fresh) - before < ALLOWED_RISE


def test_an_mcp_message_that_inflates_past_its_limit_is_refused_without_inflating_it(fresh: Gateway, bomber: str) -> None:
    message = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search"}}).encode()
    body = gzip.compress(message + b" " * INFLATED, 9)  # valid JSON, 300 MiB of it
    before = reset_peak_rss(fresh)
    response = requests.post(f"{bomber}/allowed/mcp", data=body, proxies=proxies(fresh), timeout=30, headers={
        "Content-Encoding": "gzip", "Content-Type": "application/json", "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-11-25", "X-Request": str(uuid.uuid4())})
    assert response.headers["X-Wardgate-Error"] == "mcp_body_too_large"
    assert peak_rss(fresh) - before < ALLOWED_RISE
