"""Stopping a gateway while agents hold keep-alive connections is a clean stop: exit status 0 and
nothing in the log at ERROR, no traceback."""

from __future__ import annotations

import asyncio
import http.client
import logging
from pathlib import Path

import pytest

from support import Upstream, get_on_new_connection, start_gateway, write_tenant_policy
from wardgate.proxy.server import report_loop_errors


def test_a_stop_with_connections_open_logs_no_error(opa_binary: str, tmp_path: Path, upstream: Upstream) -> None:
    policy = write_tenant_policy(tmp_path / "policy", "acme", [{"host": "127.0.0.1", "methods": ["GET"]}])
    gw = start_gateway(tmp_path / "gw", policy_paths=[policy])
    connections: list[http.client.HTTPConnection] = []
    try:
        gw.create_agent("bot", "acme", ["read"])
        token = gw.mint("bot", ttl=600)
        for _ in range(3):  # left open, as an agent's pool would
            connections.append(get_on_new_connection(gw, f"{upstream.http_url}/stop", token))
        gw.stop()
        assert gw.process.returncode == 0
    finally:
        for connection in connections:
            connection.close()
        gw.stop()
    log = gw.log.read_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-4000:]


def test_the_loop_still_reports_real_errors(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.DEBUG):
            report_loop_errors(loop, {"message": "Exception in callback", "exception": asyncio.CancelledError()})
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
            report_loop_errors(loop, {"message": "Exception in callback", "exception": ValueError("real")})
            assert [r for r in caplog.records if r.levelno >= logging.ERROR and "Exception in callback" in r.getMessage()]
    finally:
        loop.close()
