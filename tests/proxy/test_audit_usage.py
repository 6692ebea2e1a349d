"""LLM responses through the real gateway: the outcome record carries their usage; `audit usage` sums it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from aiohttp import web

from audit_backends import agent_ready
from support import Gateway, LoopbackServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gateway"))
from test_llm_usage import anthropic_sse, sse  # noqa: E402

BODIES = {
    "openai": ("application/json", json.dumps({"object": "chat.completion", "model": "gpt-x",
               "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}).encode()),
    "openai-sse": ("text/event-stream", sse({"model": "gpt-x", "choices": [], "usage":
                   {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}, done=True)),
    "anthropic-sse": ("text/event-stream", anthropic_sse(30, 7)),
}


@pytest.fixture(scope="module")
def llm() -> Iterator[str]:
    """A loopback upstream that answers like the LLM APIs do."""

    async def handle(request: web.Request) -> web.StreamResponse:
        content_type, body = BODIES[request.match_info["kind"]]
        if content_type == "text/event-stream":  # sent in chunks, as a real stream is
            response = web.StreamResponse(headers={"Content-Type": content_type})
            await response.prepare(request)
            for start in range(0, len(body), 40):
                await response.write(body[start:start + 40])
            await response.write_eof()
            return response
        return web.Response(body=body, content_type=content_type)

    def build() -> web.Application:
        app = web.Application()
        app.router.add_post("/allowed/v1/{kind}", handle)
        return app

    server = LoopbackServer(build, [None])
    (port,) = server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_llm_usage_is_recorded_and_summed_per_user(gateway: Gateway, llm: str, tmp_path: Path) -> None:
    if not _agent_exists(gateway, "usage-bot"):
        gateway.create_agent("usage-bot", "acme", ["read", "write"])
        agent_ready(gateway, llm.replace("/allowed", ""), "usage-bot")
    calls = [("dora", "openai"), ("dora", "anthropic-sse"), ("erin", "openai-sse"), ("erin", "openai")]
    ids = {}
    for user, kind in calls:
        proxy = gateway.proxy_with(gateway.mint("usage-bot", user=user, scopes=["read", "write"]))
        response = requests.post(f"{llm}/allowed/v1/{kind}", json={"messages": []}, proxies={"http": proxy}, timeout=10)
        assert response.status_code == 200
        assert response.content == BODIES[kind][1]  # the agent gets the body untouched
        ids[(user, kind)] = response.headers["X-Wardgate-Audit-Id"]
    outcome = [r for r in gateway.records(ids[("dora", "anthropic-sse")], wait_for=2) if r["kind"] == "outcome"][0]
    assert json.loads(outcome["usage"]) == {"provider": "anthropic", "model": "claude-x", "input_tokens": 30,
                                            "output_tokens": 7, "total_tokens": 37}
    for call_id in ids.values():
        gateway.records(call_id, wait_for=2)
    done = subprocess.run(
        [sys.executable, "-m", "wardgate.gateway.cli", "--home", str(gateway.home), "audit", "usage", "--by", "user",
         "--since", "1h", "--format", "json"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=gateway_env(gateway),
    )
    assert done.returncode == 0, done.stderr
    totals = {row["user"]: row for row in json.loads(done.stdout)}
    assert totals["dora"] == {"user": "dora", "calls": 2, "input_tokens": 130, "output_tokens": 27, "total_tokens": 157}
    assert totals["erin"] == {"user": "erin", "calls": 2, "input_tokens": 110, "output_tokens": 25, "total_tokens": 135}


def gateway_env(gateway: Gateway) -> dict[str, str]:
    """The CLI's environment: WARDGATE_TEST_* belong to the harness (wardgate refuses unknown settings)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("WARDGATE_TEST_")}, "WARDGATE_HOME": str(gateway.home)}


def _agent_exists(gateway: Gateway, name: str) -> bool:
    from wardgate.gateway.agents import AgentRegistry
    from wardgate.gateway.errors import NotFound

    registry = AgentRegistry(gateway.settings.state_db)
    try:
        registry.get(name)
        return True
    except NotFound:
        return False
    finally:
        registry.close()
