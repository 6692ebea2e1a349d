"""Real parts for tests: loopback upstreams (HTTP and HTTPS), gateway processes, OPA processes."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import trustme
from aiohttp import web

from wardgate.gateway.agents import AgentRegistry
from wardgate.gateway.audit import AuditQuery, query_records
from wardgate.gateway.audit_setup import audit_source
from wardgate.gateway.identity import TokenIssuer
from wardgate.gateway.keys import KeyRing
from wardgate.gateway.opa_address import unix_socket
from wardgate.gateway.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
POLICIES = REPO / "policies"


def require(component: str, found: bool) -> None:
    """Skip locally when a component is missing; with CI=true fail instead."""
    import pytest

    if found:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{component} is required under CI=true but is missing")
    pytest.skip(f"{component} is not available")


def read_until_closed(sock: socket.socket) -> tuple[bytes, bool]:
    """Everything the peer sends, and whether it closed the connection (rather than the socket timing out)."""
    answer = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return answer, True
        except TimeoutError:
            return answer, False
        if not chunk:
            return answer, True
        answer += chunk


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    peer_port: int | None = None  # the connecting side's port: one per upstream connection


class LoopbackServer:
    """An aiohttp application served on 127.0.0.1 from its own thread and event loop.

    ``start()`` binds one port per entry of ``tls`` (None for plain HTTP, else the server's SSL
    context) and returns them in that order.
    """

    def __init__(self, build: Callable[[], web.Application], tls: list[ssl.SSLContext | None]) -> None:
        self._build = build
        self._tls = tls
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> list[int]:
        ready = threading.Event()
        ports: list[int] = []

        def run() -> None:
            loop = self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            runner = web.AppRunner(self._build(), access_log=None)
            loop.run_until_complete(runner.setup())
            for context in self._tls:
                site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
                loop.run_until_complete(site.start())
                ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10)
        return ports

    def stop(self) -> None:
        if self.loop:
            self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread:
            self._thread.join(10)


def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    """A server context with a certificate from ``ca`` for localhost and 127.0.0.1."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context


@dataclass
class Upstream:
    """An aiohttp server on 127.0.0.1, plain and TLS, in its own thread; records what reached it."""

    ca: trustme.CA
    seen: list[SeenRequest] = field(default_factory=list)
    http_port: int = 0
    https_port: int = 0
    _server: LoopbackServer | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def https_url(self) -> str:
        return f"https://localhost:{self.https_port}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.seen.append(SeenRequest(request.method, request.path_qs, dict(request.headers), body, peer[1] if peer else None))
        if request.path.startswith("/status/"):
            return web.Response(status=int(request.path.rsplit("/", 1)[1]))
        return web.json_response({"path": request.path_qs, "method": request.method, "headers": dict(request.headers)})

    def start(self) -> None:
        def build() -> web.Application:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            return app

        self._server = LoopbackServer(build, [None, server_tls(self.ca)])
        self.http_port, self.https_port = self._server.start()

    def stop(self) -> None:
        if self._server:
            self._server.stop()

    def count(self, path_prefix: str) -> int:
        return sum(1 for r in self.seen if r.path.startswith(path_prefix))


def write_tenant_policy(folder: Path, tenant: str, rules: list[dict[str, Any]]) -> Path:
    target = folder / "wardgate" / "config" / "tenants" / tenant
    target.mkdir(parents=True, exist_ok=True)
    (target / "data.json").write_text(json.dumps({"allow": rules}))
    return folder


def metric(text: str, name: str, **labels: str) -> float:
    """The value of ``name{labels}`` (labels in the order the exporter prints them) in Prometheus
    exposition ``text``; 0 when it is not there."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def opa_get(url: str, path: str) -> tuple[int, bytes]:
    """(status, body) of ``GET path`` at the OPA at ``url``: ``http://`` or the managed OPA's ``unix://``."""
    socket_path = unix_socket(url)
    if socket_path is not None:
        connection: http.client.HTTPConnection = _UnixConnection(socket_path, 10)
    else:
        host, _, port = url.removeprefix("http://").partition(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def opa_decisions_answered(url: str) -> int:
    """How many Data API queries the OPA at ``url`` answered with 200 (its own /metrics)."""
    status, text = opa_get(url, "/metrics")
    assert status == 200
    return int(metric(text.decode(), "http_request_duration_seconds_count", code="200", handler="v1/data", method="post"))


@dataclass
class Gateway:
    """A real ``wardgate up`` process with its own state folder and loopback ports."""

    home: Path
    config: Path
    process: subprocess.Popen[bytes]
    listeners: dict[str, Any]
    settings: Settings
    log: Path

    @property
    def proxy(self) -> str:
        return f"http://{self.listeners['proxy']}"

    @property
    def proxy_port(self) -> int:
        return int(self.listeners["proxy"].rsplit(":", 1)[1])

    @property
    def admin(self) -> str:
        return f"http://{self.listeners['admin']}"

    def proxy_with(self, token: str) -> str:
        return f"http://agent:{token}@{self.listeners['proxy']}"

    @property
    def ca_file(self) -> Path:
        return self.settings.ca_dir / "wardgate-ca.pem"

    @property
    def admin_token(self) -> str:
        return (self.home / "admin.token").read_text().strip()

    def create_agent(self, name: str, tenant: str, scopes: list[str] | None = None) -> None:
        registry = AgentRegistry(self.settings.state_db)
        try:
            registry.create(name, tenant, scopes or [])
        finally:
            registry.close()

    def live_listeners(self) -> dict[str, Any]:
        """run/listeners.json as the gateway keeps it now (``listeners`` is the copy read at start;
        the OPA's address and pid follow reloads and restarts)."""
        return json.loads((self.settings.run_dir / "listeners.json").read_text())  # type: ignore[no-any-return]

    def mint(self, agent: str, user: str = "alice", tenant: str = "acme", ttl: float = 300, **kw: Any) -> str:
        issuer = TokenIssuer(KeyRing.load(self.settings.keys_dir), self.settings.identity)
        return issuer.mint(agent=agent, tenant=tenant, user=user, scopes=tuple(kw.pop("scopes", ())), ttl=ttl, **kw)

    def records(self, call_id: str | None = None, wait_for: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Audit records (oldest first), waiting up to ``timeout`` for at least ``wait_for`` of them."""
        deadline = time.monotonic() + timeout
        while True:
            found = list(reversed(query_records(audit_source(self.settings), AuditQuery(call_id=call_id, limit=1000))))
            if len(found) >= wait_for or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def records_for(self, path: str, until: Callable[[list[dict[str, Any]]], bool],
                    timeout: float = 5.0) -> list[dict[str, Any]]:
        """The audit records of calls to ``path`` (oldest first), waiting up to ``timeout`` for ``until`` to hold."""
        deadline = time.monotonic() + timeout
        while True:
            found = [record for record in self.records(wait_for=0, timeout=0) if record["path"] == path]
            if until(found) or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def outcome_for(self, path: str) -> dict[str, Any]:
        """The outcome record of the call to ``path``, which must have its intent record too."""
        records = self.records_for(path, lambda found: any(record["kind"] == "outcome" for record in found))
        outcomes = [record for record in records if record["kind"] == "outcome"]
        assert outcomes, f"no outcome record for {path}"
        assert any(record["kind"] == "intent" for record in records)
        return outcomes[0]

    def audit_writer_pid(self, timeout: float = 10.0) -> int:
        """The gateway's audit writer process (gateway/audit_child.py), once it runs."""
        deadline = time.monotonic() + timeout
        while True:
            found = audit_writer_pids(self.process.pid)
            if found:
                return found[0]
            assert time.monotonic() < deadline, "the gateway has no audit writer process"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


LOOPBACK_RANGES = ["127.0.0.0/8", "::1/128"]


def audit_writer_pids(parent: int) -> list[int]:
    """The audit writer processes (gateway/audit_child.py) that process ``parent`` started."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent and \
                    b"wardgate.gateway.audit_child" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def get_on_new_connection(gateway: Gateway, url: str, token: str) -> http.client.HTTPConnection:
    """One GET of ``url`` through the proxy on a connection of its own, answered 200; the
    connection is returned open (keep-alive)."""
    connection = http.client.HTTPConnection(*gateway.listeners["proxy"].rsplit(":", 1), timeout=10)
    basic = "Basic " + base64.b64encode(f"agent:{token}".encode()).decode()
    connection.request("GET", url, headers={"Proxy-Authorization": basic})
    response = connection.getresponse()
    assert response.status == 200
    response.read()
    return connection


def get_through(gateway: Gateway, token: str, url: str) -> requests.Response:
    """GET ``url`` (http or https) through ``gateway`` as the agent holding ``token``."""
    proxy = gateway.proxy_with(token)
    return requests.get(url, proxies={"http": proxy, "https": proxy}, verify=str(gateway.ca_file), timeout=15)


def start_gateway_on_opa(root: Path, opa: OpaServer, upstream_ca: Path) -> Gateway:
    """A gateway asking ``opa`` (``[opa] mode = "external"``), with agent acme-bot."""
    gw = start_gateway(root, upstream_ca=upstream_ca, env={"WARDGATE_OPA__MODE": "external", "WARDGATE_OPA__URL": opa.url})
    gw.create_agent("acme-bot", "acme", ["read"])
    return gw


def environment_of(pid: int, name: str) -> str | None:
    """The value of ``name`` in the environment process ``pid`` was started with."""
    for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        key, _, value = entry.partition(b"=")
        if key == name.encode():
            return value.decode()
    return None


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    """True as soon as ``predicate()`` is, False if it still is not after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def gateway_environ() -> dict[str, str]:
    """This process's environment minus the test harness's own WARDGATE_TEST_* variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith("WARDGATE_TEST_")}


def start_gateway(
    root: Path, *, extra_config: str = "", policy_paths: list[Path] | None = None, upstream_ca: Path | None = None,
    env: dict[str, str] | None = None, allow_ranges: list[str] | None = LOOPBACK_RANGES,
    up_args: list[str] | None = None, proxy_listen: str | None = "127.0.0.1:0",
) -> Gateway:
    """A gateway whose upstreams live on loopback, so loopback is allowed unless ``allow_ranges`` says otherwise.
    ``proxy_listen`` None: the proxy listens where the config says."""
    root.mkdir(parents=True, exist_ok=True)
    home = root / "home"
    paths = [POLICIES, *(policy_paths or [])]
    config = root / "wardgate.toml"
    lines = ["version = 1", "", "[opa]", f"paths = {json.dumps([str(p) for p in paths])}"]
    if upstream_ca:
        lines += ["", "[proxy]", f"upstream_ca_file = {json.dumps(str(upstream_ca))}"]
    if allow_ranges:
        lines += ["", "[egress]", f"unsafe_allow_ranges = {json.dumps(allow_ranges)}"]
    config.write_text("\n".join(lines) + "\n" + extra_config)
    log = root / "gateway.log"
    environment = {**gateway_environ(), "WARDGATE_HOME": str(home), **(env or {})}
    environment.pop("WARDGATE_CONFIG", None)
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "wardgate.gateway.cli", "--config", str(config), "up",
             *(["--proxy-listen", proxy_listen] if proxy_listen else []), "--admin-listen", "127.0.0.1:0", *(up_args or [])],
            cwd=root, env=environment, stdout=handle, stderr=subprocess.STDOUT,
        )
    listeners_file = home / "run" / "listeners.json"
    deadline = time.monotonic() + 30
    while not listeners_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"gateway did not start:\n{log.read_text()}")
        time.sleep(0.05)
    settings = load_settings(config_file=config, environ=environment, cwd=root)
    return Gateway(home, config, process, json.loads(listeners_file.read_text()), settings, log)


@dataclass
class OpaServer:
    """A standalone ``opa run --server`` the test can stop and start again on the same port (or,
    given ``socket``, on that Unix socket)."""

    paths: list[Path]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    socket: Path | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}" if self.socket else f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        opa = shutil.which("opa")
        assert opa
        address = ["unix://" + str(self.socket), "--unix-socket-perm", "600"] if self.socket else [f"127.0.0.1:{self.port}"]
        self.process = subprocess.Popen(
            [opa, "run", "--server", "--addr", *address, "--disable-telemetry",
             "--ignore", "*_test.rego", *map(str, self.paths)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if opa_get(self.url, "/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("opa did not become healthy")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
