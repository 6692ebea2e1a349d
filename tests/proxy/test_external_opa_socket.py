"""An external OPA reached on a Unix socket (``[opa] mode = "external"``, ``url = "unix:///…"``):
the way an OPA sidecar that shares a volume with the gateway is reached without a TCP port."""

from __future__ import annotations

import os
import stat
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from support import POLICIES, Gateway, OpaServer, Upstream, start_gateway_on_opa
from support import get_through as get


@pytest.fixture
def opa_on_socket(opa_binary: str, acme_policy: Path) -> Iterator[OpaServer]:
    # Not under tmp_path: a socket path must fit in 108 bytes.
    folder = Path(tempfile.mkdtemp(prefix="wg-opa-"))
    server = OpaServer([POLICIES, acme_policy], socket=folder / "opa.sock")
    server.start()
    yield server
    server.kill()
    server.socket.unlink(missing_ok=True)  # type: ignore[union-attr]
    folder.rmdir()


@pytest.fixture
def gateway_on_socket(tmp_path: Path, opa_on_socket: OpaServer, upstream_ca_file: Path) -> Iterator[Gateway]:
    gw = start_gateway_on_opa(tmp_path, opa_on_socket, upstream_ca_file)
    yield gw
    gw.stop()


def test_the_policy_on_the_socket_decides(gateway_on_socket: Gateway, opa_on_socket: OpaServer, upstream: Upstream) -> None:
    assert opa_on_socket.socket is not None
    assert stat.S_IMODE(os.stat(opa_on_socket.socket).st_mode) == 0o600
    gw = gateway_on_socket
    assert gw.live_listeners()["opa"] == opa_on_socket.url
    token = gw.mint("acme-bot")
    assert get(gw, token, f"{upstream.https_url}/allowed/x").status_code == 200
    denied = get(gw, token, f"{upstream.http_url}/elsewhere")
    assert denied.status_code == 403 and denied.headers["X-Wardgate-Error"] == "policy_denied"
    assert requests.get(f"{gw.admin}/readyz", timeout=5).status_code == 200

    opa_on_socket.kill()  # fails closed, as over TCP
    path = f"/allowed/{uuid.uuid4()}"
    refused = get(gw, token, f"{upstream.http_url}{path}")
    assert refused.status_code == 503 and refused.headers["X-Wardgate-Error"] == "policy_unavailable"
    assert upstream.count(path) == 0
    assert requests.get(f"{gw.admin}/readyz", timeout=5).status_code == 503
