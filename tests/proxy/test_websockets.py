"""WebSockets through wardgate, end to end: a real gateway, a real wss:// upstream on loopback that
gets the user's credential injected into its handshake, and aiohttp's WebSocket client going through
the proxy with CONNECT (TLS intercepted with the wardgate CA), as WebSocket clients behind a proxy do.

What reaches the agent is checked message by message; what reaches the upstream too; and the
call's audit records (one intent, one outcome written when the socket ends, with the scrub count).
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import requests
import trustme

from support import Gateway, start_gateway
from websocket_upstream import BINARY_EDGES, FORMS, WebSocketUpstream
from wardgate.gateway.vault import KeySource, Vault

# '/', '+', ' ', '"', '~' and a length that pads base64 make every form in FORMS a different string.
TOKEN = 'ws/to ken+"canary"=01234567~~~?'
SCRUBBED = "[wardgate:scrubbed]"
WAIT = 10.0  # seconds: any one message, handshake or close


@pytest.fixture(scope="module")
def ws_upstream(test_ca: trustme.CA) -> Iterator[WebSocketUpstream]:
    server = WebSocketUpstream(test_ca)
    server.start()
    yield server
    server.stop()


def credentialed_gateway(root: Path, acme_policy: Path, upstream_ca_file: Path, upstream: WebSocketUpstream,
                         extra_config: str = "") -> Gateway:
    """A gateway binding service "chat" to the upstream's TLS port, with alice's credential stored."""
    gw = start_gateway(root, policy_paths=[acme_policy], upstream_ca=upstream_ca_file,
                       extra_config=f'[services.chat]\nhosts = ["localhost"]\nports = [{upstream.tls_port}]\n'
                                    + extra_config)
    try:
        gw.create_agent("ws-bot", "acme", ["read"])
        vault = Vault(gw.settings.state_db, KeySource(gw.settings), create_keys=True)
        vault.put("acme", "alice", "chat", "secret", TOKEN.encode())
        vault.close()
        _wait_until_agent_known(gw, upstream)
    except BaseException:
        gw.stop()
        raise
    return gw


@pytest.fixture(scope="module")
def ws_gateway(
    opa_binary: str, tmp_path_factory: pytest.TempPathFactory, acme_policy: Path, upstream_ca_file: Path,
    ws_upstream: WebSocketUpstream,
) -> Iterator[Gateway]:
    gw = credentialed_gateway(tmp_path_factory.mktemp("ws-gateway"), acme_policy, upstream_ca_file, ws_upstream)
    yield gw
    gw.stop()


def _wait_until_agent_known(gw: Gateway, upstream: WebSocketUpstream) -> None:
    """The gateway re-reads the agent registry at most every 0.2 s; probe until it knows the agent."""
    proxy = gw.proxy_with(gw.mint("ws-bot"))
    for _ in range(100):
        response = requests.get(upstream.url("/allowed/probe").replace("wss:", "https:"), proxies={"https": proxy},
                                verify=str(gw.ca_file), timeout=WAIT)
        if response.status_code != 407:
            assert response.status_code == 200, response.text
            return
        time.sleep(0.05)
    raise AssertionError("the gateway never saw the agent")


@asynccontextmanager
async def websocket(gw: Gateway, url: str, *, token: str | None = None, compress: int = 15
                    ) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    trust = ssl.create_default_context(cafile=str(gw.ca_file))
    timeout = aiohttp.ClientWSTimeout(ws_receive=WAIT, ws_close=WAIT)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60, connect=WAIT)) as session:
        async with session.ws_connect(url, proxy=gw.proxy_with(token or gw.mint("ws-bot")), ssl=trust,
                                      compress=compress, timeout=timeout) as ws:
            yield ws


async def ask(ws: aiohttp.ClientWebSocketResponse, command: str) -> Any:
    await ws.send_str(command)
    message = await ws.receive(timeout=WAIT)
    assert message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), message
    return message.data


def records_of(gw: Gateway, path: str, wait_for: int) -> list[dict[str, Any]]:
    """The audit records of the call to ``path`` (oldest first), waiting for ``wait_for`` of them."""
    return gw.records_for(path, lambda found: len(found) >= wait_for)


@pytest.mark.parametrize("compress", [15, 0], ids=["permessage-deflate", "uncompressed"])
async def test_every_form_of_the_secret_is_scrubbed_from_text_and_binary_messages(
    ws_gateway: Gateway, ws_upstream: WebSocketUpstream, compress: int
) -> None:
    name = uuid.uuid4().hex
    async with websocket(ws_gateway, ws_upstream.url(f"/allowed/ws/{name}"), compress=compress) as ws:
        for form in FORMS:
            assert await ask(ws, f"text {form}") == f"<{form}:{SCRUBBED}>"
            assert await ask(ws, f"binary {form}") == BINARY_EDGES[0] + SCRUBBED.encode() + BINARY_EDGES[1]
        assert bool(ws.compress) == bool(compress)  # the agent's side negotiated what was asked
    session = ws_upstream.sessions[name]
    assert session.headers["Authorization"] == f"Bearer {TOKEN}"  # the upstream had the real credential
    assert bool(session.compressed) == bool(compress)  # and so did wardgate's side towards the upstream


async def test_a_secret_split_across_frames_is_scrubbed(ws_gateway: Gateway, ws_upstream: WebSocketUpstream) -> None:
    """mitmproxy hands the hook whole messages: the two halves are searched as one."""
    name = uuid.uuid4().hex
    async with websocket(ws_gateway, ws_upstream.url(f"/allowed/ws/{name}"), compress=0) as ws:
        for form in ("plain", "base64", "json"):
            assert await ask(ws, f"fragmented {form}") == f"<{form}:{SCRUBBED}>"


async def test_other_messages_pass_byte_for_byte_both_ways(ws_gateway: Gateway, ws_upstream: WebSocketUpstream) -> None:
    """Near misses and arbitrary bytes come back untouched while a real echo in the same session is
    scrubbed; what the agent sends reaches the upstream as sent (the agent never holds the secret)."""
    name = uuid.uuid4().hex
    near_misses = [TOKEN[:-1], TOKEN[1:], FORMS["base64"](TOKEN)[:-3], "ünïcödé ✓ " + TOKEN[:10], "x" * 70_000]
    binary = bytes(range(256)) * 40 + TOKEN[:-1].encode()
    async with websocket(ws_gateway, ws_upstream.url(f"/allowed/ws/{name}")) as ws:
        for text in near_misses:
            assert await ask(ws, f"say {text}") == text
        assert await ask(ws, "text plain") == f"<plain:{SCRUBBED}>"
        await ws.send_bytes(binary)
        reply = await ws.receive(timeout=WAIT)
        assert reply.type == aiohttp.WSMsgType.BINARY and reply.data == binary
        assert await ask(ws, f"say client sent {TOKEN}") == f"client sent {SCRUBBED}"
    received = ws_upstream.sessions[name].received
    assert received[-1] == f"say client sent {TOKEN}"  # client→server: not scrubbed
    assert received[-2] == binary
    assert received[:len(near_misses)] == [f"say {text}" for text in near_misses]


async def test_a_long_scrubbed_text_message_keeps_every_character(
    ws_gateway: Gateway, ws_upstream: WebSocketUpstream
) -> None:
    """A scrubbed message changes length, so mitmproxy re-frames it (4000-byte frames): the cuts
    must fall between characters, else 'é' at a cut reaches the agent as U+FFFD (proxy/websocket_frames.py)."""
    text = "a" + "é" * 3000 + TOKEN + "€𝄞" * 1500
    async with websocket(ws_gateway, ws_upstream.url(f"/allowed/ws/{uuid.uuid4().hex}"), compress=0) as ws:
        assert await ask(ws, f"say {text}") == text.replace(TOKEN, SCRUBBED)


async def test_the_outcome_is_written_when_the_socket_ends_with_the_sessions_scrub_count(
    ws_gateway: Gateway, ws_upstream: WebSocketUpstream
) -> None:
    name = uuid.uuid4().hex
    path = f"/allowed/ws/{name}"
    async with websocket(ws_gateway, ws_upstream.url(f"{path}?echo_header=1")) as ws:
        for command in ("text plain", "binary base64", "say nothing here", "text json"):
            await ask(ws, command)
        # The socket is open: the call has its intent, and no outcome yet.
        assert [r["kind"] for r in await asyncio.to_thread(records_of, ws_gateway, path, 1)] == ["intent"]
    records = await asyncio.to_thread(records_of, ws_gateway, path, 2)
    assert [r["kind"] for r in records] == ["intent", "outcome"]
    intent, outcome = records
    assert intent["call_id"] == outcome["call_id"]
    assert outcome["credential_service"] == "chat"
    assert outcome["status"] == 101 and outcome["error"] is None
    assert outcome["scrub_count"] == 4  # the 101's X-Echo header and three messages
    assert outcome["bytes_out"] > 0 and outcome["bytes_in"] >= len("text plainbinary base64say nothing heretext json")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_a_long_session_does_not_keep_its_messages(ws_gateway: Gateway, ws_upstream: WebSocketUpstream) -> None:
    """mitmproxy keeps every message of a socket on its flow; the gateway counts each one and drops
    it once relayed, so 96 MiB each way leave its memory about where it was, and the outcome still
    has every byte (proxy/audit_trail.py)."""
    name = uuid.uuid4().hex
    path = f"/allowed/ws/{name}"
    chunk, count = 2 << 20, 48
    async with websocket(ws_gateway, ws_upstream.url(path), compress=0) as ws:
        async def round_trip(index: int) -> None:
            payload = bytes([index % 251]) * chunk
            await ws.send_bytes(payload)
            reply = await ws.receive(timeout=WAIT)
            assert reply.type == aiohttp.WSMsgType.BINARY and reply.data == payload

        await round_trip(0)  # the allocator's first large buffers are not what is measured
        before = rss_bytes(ws_gateway.process.pid)
        for index in range(1, count + 1):
            await round_trip(index)
        grown = rss_bytes(ws_gateway.process.pid) - before
    # Kept, the messages alone would be count * chunk * 2 = 192 MiB.
    assert grown < count * chunk // 4, f"gateway RSS grew by {grown >> 20} MiB over the session"
    outcome = (await asyncio.to_thread(records_of, ws_gateway, path, 2))[-1]
    assert outcome["kind"] == "outcome"
    assert (outcome["bytes_in"], outcome["bytes_out"]) == ((count + 1) * chunk, (count + 1) * chunk)


LIMIT = 65536  # [limits] max_websocket_message_bytes of the gateway below


@pytest.fixture(scope="module")
def small_ws_gateway(
    opa_binary: str, tmp_path_factory: pytest.TempPathFactory, acme_policy: Path, upstream_ca_file: Path,
    ws_upstream: WebSocketUpstream,
) -> Iterator[Gateway]:
    gw = credentialed_gateway(tmp_path_factory.mktemp("ws-small"), acme_policy, upstream_ca_file, ws_upstream,
                              f"\n[limits]\nmax_websocket_message_bytes = {LIMIT}\n")
    yield gw
    gw.stop()


async def test_messages_up_to_the_limit_pass_whole(small_ws_gateway: Gateway, ws_upstream: WebSocketUpstream) -> None:
    """The count is per message: several messages just under the limit, each way, all pass."""
    async with websocket(small_ws_gateway, ws_upstream.url(f"/allowed/ws/{uuid.uuid4().hex}")) as ws:
        for _ in range(3):
            assert await ask(ws, f"big {LIMIT - 10}") == "a" * (LIMIT - 10)
            payload = b"\x01" * (LIMIT - 10)
            await ws.send_bytes(payload)
            assert (await ws.receive(timeout=WAIT)).data == payload


@pytest.mark.parametrize("compress", [15, 0], ids=["permessage-deflate", "uncompressed"])
@pytest.mark.parametrize("sender", ["upstream", "agent"])
async def test_a_message_over_the_limit_ends_the_session_with_1009(
        small_ws_gateway: Gateway, ws_upstream: WebSocketUpstream, compress: int, sender: str) -> None:
    """With permessage-deflate, 4 MiB of one letter is a few kilobytes on the wire: the gateway must
    stop collecting at the limit, not once the whole message has been inflated."""
    name = uuid.uuid4().hex
    path = f"/allowed/ws/{name}"
    async with websocket(small_ws_gateway, ws_upstream.url(path), compress=compress) as ws:
        if sender == "upstream":
            await ws.send_str(f"big {4 << 20}")
        else:
            await ws.send_bytes(b"\x02" * (4 << 20))
        closing = await ws.receive(timeout=WAIT)
        assert closing.type == aiohttp.WSMsgType.CLOSE, closing
        assert (closing.data, closing.extra) == (1009, "wardgate: message too big")
    if sender == "agent":
        assert all(len(message) < LIMIT for message in ws_upstream.sessions[name].received), "it reached the upstream"
    outcome = (await asyncio.to_thread(records_of, small_ws_gateway, path, 2))[-1]
    assert (outcome["kind"], outcome["status"], outcome["error"]) == ("outcome", 101, "websocket_message_too_big")


async def test_an_upgrade_negotiating_an_unreadable_extension_is_refused(
    ws_gateway: Gateway, ws_upstream: WebSocketUpstream
) -> None:
    """mitmproxy decodes only permessage-deflate; anything else could hide the secret: 502, no socket."""
    path = f"/allowed/odd-extension/{uuid.uuid4().hex}"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with websocket(ws_gateway, ws_upstream.url(path), compress=0):
            pass
    assert refused.value.status == 502
    assert refused.value.headers is not None and refused.value.headers["X-Wardgate-Error"] == "response_uninspectable"
    records = await asyncio.to_thread(records_of, ws_gateway, path, 2)
    assert [r["kind"] for r in records] == ["intent", "refusal"]
    assert records[1]["error"] == "response_uninspectable" and records[1]["status"] == 502
    # The body says why; an upgrade by hand (requests knows nothing of WebSockets) shows it.
    proxy = ws_gateway.proxy_with(ws_gateway.mint("ws-bot"))
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    answer = await asyncio.to_thread(
        requests.get, ws_upstream.url(f"/allowed/odd-extension/{uuid.uuid4().hex}").replace("wss:", "https:"),
        headers=upgrade, proxies={"https": proxy}, verify=str(ws_gateway.ca_file), timeout=WAIT,
    )
    assert answer.status_code == 502 and answer.headers["Connection"] == "close"
    assert answer.json()["error"]["reasons"] == ["websocket_extension_unsupported"]


async def test_an_upgrade_mitmproxy_would_relay_as_raw_bytes_is_refused(
    ws_gateway: Gateway, ws_upstream: WebSocketUpstream
) -> None:
    """Sec-WebSocket-Version 8: aiohttp's server accepts it, mitmproxy relays anything but 13 as raw
    TCP with no message hook, so the echo below would reach the agent unscrubbed: 502 instead."""
    path = f"/allowed/ws/{uuid.uuid4().hex}"
    proxy = ws_gateway.proxy_with(ws_gateway.mint("ws-bot"))
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "8",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    answer = await asyncio.to_thread(
        requests.get, ws_upstream.url(path).replace("wss:", "https:"), headers=upgrade, proxies={"https": proxy},
        verify=str(ws_gateway.ca_file), timeout=WAIT,
    )
    assert answer.status_code == 502 and answer.headers["Connection"] == "close"
    assert answer.json()["error"]["code"] == "response_uninspectable"
    assert answer.json()["error"]["reasons"] == ["upgrade_protocol_unsupported"]
    records = await asyncio.to_thread(records_of, ws_gateway, path, 2)
    assert [(r["kind"], r["error"]) for r in records] == [("intent", None), ("refusal", "response_uninspectable")]


async def test_revoking_the_agent_closes_its_live_websocket_and_records_the_outcome(
    ws_gateway: Gateway, ws_upstream: WebSocketUpstream
) -> None:
    name = uuid.uuid4().hex
    path = f"/allowed/ws/{name}"
    doomed, other = ws_gateway.mint("ws-bot"), ws_gateway.mint("ws-bot")
    async with websocket(ws_gateway, ws_upstream.url(path), token=doomed) as ws, \
            websocket(ws_gateway, ws_upstream.url(f"/allowed/ws/{uuid.uuid4().hex}"), token=other) as lasting:
        assert await ask(ws, "text plain") == f"<plain:{SCRUBBED}>"
        await asyncio.to_thread(_revoke_token, ws_gateway, doomed)
        message = await ws.receive(timeout=WAIT)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        assert await ask(lasting, "say still here") == "still here"  # another identity's socket lives on
    records = await asyncio.to_thread(records_of, ws_gateway, path, 2)
    assert [r["kind"] for r in records] == ["intent", "outcome"]
    assert records[1]["scrub_count"] == 1


def _revoke_token(gw: Gateway, token: str) -> None:
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    response = requests.post(f"{gw.admin}/v1/revocations", json={"kind": "token", "subject": jti, "reason": "test"},
                             headers={"Authorization": f"Bearer {gw.admin_token}"}, timeout=WAIT)
    assert response.status_code == 201, response.text


async def test_a_socket_open_when_the_gateway_stops_gets_its_outcome(
    opa_binary: str, tmp_path: Path, acme_policy: Path, upstream_ca_file: Path, ws_upstream: WebSocketUpstream
) -> None:
    """The outcome waits for websocket_end; a stop must not leave the call without one."""
    gw = await asyncio.to_thread(credentialed_gateway, tmp_path, acme_policy, upstream_ca_file, ws_upstream)
    try:
        path = f"/allowed/ws/{uuid.uuid4().hex}"
        async with websocket(gw, ws_upstream.url(path)) as ws:
            assert await ask(ws, "text url") == f"<url:{SCRUBBED}>"
            await asyncio.to_thread(gw.stop)
            assert gw.process.returncode == 0
    finally:
        gw.stop()
    records = await asyncio.to_thread(records_of, gw, path, 2)
    assert [r["kind"] for r in records] == ["intent", "outcome"]
    assert records[1]["error"] == "gateway_stopped" and records[1]["scrub_count"] == 1
