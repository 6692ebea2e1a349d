"""limits.connect_timeout on a real gateway: a destination that drops SYNs gets 504 upstream_connect_timeout
within the limit (not after the kernel's two minutes of SYN retries), audited, over plain HTTP and through
an intercepted CONNECT tunnel; and the mitmproxy code the limit relies on is still the code it was written for."""

from __future__ import annotations

import inspect
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from mitmproxy.proxy import server as mitm_server
from mitmproxy.version import VERSION as MITMPROXY_VERSION

from support import Gateway, Upstream, start_gateway

# mitmproxy versions whose open_connection was read for ConnectTimeout (proxy/upstream_timeout.py).
CHECKED_ON = ("11.0.2",)
CONNECT_TIMEOUT = 0.5
# The read timeout is far above the connect timeout and the client's patience: only the connect limit can answer in time.
LIMITS = f"\n[limits]\nconnect_timeout = {CONNECT_TIMEOUT}\nupstream_timeout = 30\n"
PATIENCE = 8.0  # the client's own timeout; without the connect limit the call would still hang past it


class SynDroppingPort:
    """A loopback port whose connects never complete: it listens with a backlog of 0 and one connection
    nobody accepts fills its accept queue, so Linux drops every further SYN (the client keeps retrying)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.filler = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        probe = socket.socket()
        probe.settimeout(0.3)
        try:
            probe.connect(("127.0.0.1", self.port))
        except TimeoutError:
            pass
        else:
            pytest.fail("the kernel completed a connect to a full accept queue; this test cannot make a connect hang")
        finally:
            probe.close()

    def accepted_after_filler(self) -> int:
        """Connections that did complete besides our own filler (the upstream receiving anything needs one)."""
        self.listener.setblocking(False)
        count = 0
        try:
            while True:
                conn, _ = self.listener.accept()
                conn.close()
                count += 1
        except BlockingIOError:
            pass
        finally:
            self.listener.setblocking(True)
        return count - 1

    def stop(self) -> None:
        self.filler.close()
        self.listener.close()


@pytest.fixture
def dropping() -> Iterator[SynDroppingPort]:
    port = SynDroppingPort()
    yield port
    port.stop()


@pytest.fixture(scope="module")
def hasty(opa_binary: str, tmp_path_factory: pytest.TempPathFactory, acme_policy: Path, upstream_ca_file: Path) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("connect-timeout"), policy_paths=[acme_policy],
                       upstream_ca=upstream_ca_file, extra_config=LIMITS)
    gw.create_agent("acme-bot", "acme", ["read", "write"])
    yield gw
    gw.stop()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_connect_that_never_completes_gets_504_upstream_connect_timeout(
    hasty: Gateway, dropping: SynDroppingPort, scheme: str
) -> None:
    path = f"/allowed/connect/{scheme}/{uuid.uuid4()}"
    proxy = hasty.proxy_with(hasty.mint("acme-bot"))
    # https: CONNECT localhost:port, wardgate intercepts, and dials the upstream for the inner request.
    host = "127.0.0.1" if scheme == "http" else "localhost"
    started = time.monotonic()
    response = requests.get(f"{scheme}://{host}:{dropping.port}{path}", proxies={scheme: proxy},
                            verify=str(hasty.ca_file), timeout=PATIENCE)
    elapsed = time.monotonic() - started
    assert (response.status_code, response.headers.get("X-Wardgate-Error")) == (504, "upstream_connect_timeout")
    assert response.json()["error"]["code"] == "upstream_connect_timeout"
    assert CONNECT_TIMEOUT * 0.9 <= elapsed < CONNECT_TIMEOUT + 3
    record = hasty.outcome_for(path)
    assert (record["status"], record["error"]) == (504, "upstream_connect_timeout")
    assert dropping.accepted_after_filler() == 0  # the upstream never had a connection, so received nothing


def test_a_connect_that_completes_is_not_cut(hasty: Gateway, upstream: Upstream) -> None:
    proxy = hasty.proxy_with(hasty.mint("acme-bot"))
    for url in (upstream.http_url, upstream.https_url):
        path = f"/allowed/connected/{uuid.uuid4()}"
        response = requests.get(f"{url}{path}", proxies={"http": proxy, "https": proxy}, verify=str(hasty.ca_file),
                                timeout=PATIENCE)
        assert response.status_code == 200 and upstream.count(path) == 1


def test_the_mitmproxy_dial_the_limit_relies_on_is_unchanged() -> None:
    """ConnectTimeout cancels the task in ``open_connection`` while it awaits ``asyncio.open_connection``
    and relies on mitmproxy catching that CancelledError as the connection's error, on ``timestamp_start``
    being stamped just before the dial, and on no option of its own bounding it. Checked for the pinned
    version; a new mitmproxy must be re-read before this is bumped."""
    assert MITMPROXY_VERSION in CHECKED_ON, (
        f"mitmproxy {MITMPROXY_VERSION}: re-read ConnectionHandler.open_connection against ConnectTimeout, "
        "then add the version to CHECKED_ON")
    source = inspect.getsource(mitm_server.ConnectionHandler.open_connection)
    stamp = source.index("command.connection.timestamp_start = time.time()")
    dial = source.index("await asyncio.open_connection(")
    caught = source.index("except (OSError, asyncio.CancelledError) as e:")
    assert stamp < dial < caught
    assert "command.connection.error = err" in source[caught:]
    assert "ServerConnectErrorHook" in source[caught:] and "OpenConnectionCompleted(command, err)" in source[caught:]
    assert "wait_for" not in source and "timeout" not in source
