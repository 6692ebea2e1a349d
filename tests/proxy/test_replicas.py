"""Several gateway replicas on one PostgreSQL: a revocation taken by one is enforced by the others,
and a replica that cannot refresh its revocation view refuses calls (503) instead of serving on
stale data. Real PostgreSQL (scripts/postgres.sh), real gateway processes, a real TCP relay
between one replica and the database so the test can cut that replica off.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import jwt
import pytest
import requests

from support import Gateway, Upstream, gateway_environ, require, start_gateway

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A fresh database on the test server, so these replicas share nothing with other tests."""
    dsn = os.environ.get("WARDGATE_TEST_PG_DSN")
    require("PostgreSQL (run under scripts/postgres.sh)", bool(dsn))
    assert dsn
    name = f"wardgate_rev_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    parts = urlsplit(dsn)
    yield urlunsplit(parts._replace(path=f"/{name}"))
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class Relay:
    """A loopback TCP relay to PostgreSQL that the test can cut (every connection dropped, new ones
    refused) and restore on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()

    def _call(self, coro):  # noqa: ANN001, ANN202
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    def start(self) -> None:
        self._call(self._start())

    def cut(self) -> None:
        self._call(self._cut())


def replica(root: Path, dsn: str, acme_policy: Path, upstream_ca_file: Path, keys_from: Path | None = None,
            revocation: str = "") -> Gateway:
    if keys_from is not None:
        # Replicas share the signing keys (in production: the same secret mounted on each).
        shutil.copytree(keys_from, root / "home" / "keys")
    config = f'\n[state]\nurl = "{dsn}"\n\n[revocation]\n{revocation}\n'
    gateway = start_gateway(root, policy_paths=[acme_policy], upstream_ca=upstream_ca_file, extra_config=config)
    gateway.create_agent("acme-bot", "acme", ["read"])
    return gateway


def status(gw: Gateway, upstream: Upstream, token: str) -> tuple[int, str | None]:
    try:
        response = requests.get(f"{upstream.http_url}/allowed/{uuid.uuid4()}", proxies={"http": gw.proxy_with(token)},
                                timeout=15)
    except requests.exceptions.ConnectionError:
        # A revocation that lands while this request is in flight closes its connection.
        return 0, "connection_closed"
    return response.status_code, response.headers.get("X-Wardgate-Error")


def wait_for(gw: Gateway, upstream: Upstream, token: str, expected: tuple[int, str | None], bound: float = 15.0) -> float:
    started = time.monotonic()
    while (seen := status(gw, upstream, token)) != expected:
        assert time.monotonic() - started < bound, f"still {seen}, expected {expected}"
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def replicas(opa_binary: str, tmp_path_factory: pytest.TempPathFactory, pg_database: str, acme_policy: Path,
             upstream_ca_file: Path) -> Iterator[tuple[Gateway, Gateway]]:
    first = replica(tmp_path_factory.mktemp("replica-a"), pg_database, acme_policy, upstream_ca_file)
    # The second replica polls only once a minute: a revocation that reaches it sooner came by NOTIFY.
    second = replica(tmp_path_factory.mktemp("replica-b"), pg_database, acme_policy, upstream_ca_file,
                     keys_from=first.settings.keys_dir, revocation='poll_interval = "60s"\nmax_staleness = "120s"')
    yield first, second
    second.stop()
    first.stop()


def test_revocation_on_one_replica_reaches_the_other_by_notify(
    replicas: tuple[Gateway, Gateway], upstream: Upstream
) -> None:
    first, second = replicas
    token = first.mint("acme-bot")
    assert status(first, upstream, token) == (200, None)
    assert status(second, upstream, token) == (200, None)
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    response = requests.post(f"{first.admin}/v1/revocations", json={"kind": "token", "subject": jti},
                             headers={"Authorization": f"Bearer {first.admin_token}"}, timeout=10)
    assert response.status_code == 201
    assert status(first, upstream, token) == (407, "identity_revoked")  # immediate where it was taken
    took = wait_for(second, upstream, token, (407, "identity_revoked"))
    print(f"revocation reached the other replica after {took * 1000:.0f} ms")


def test_cli_revocation_with_no_gateway_running_reaches_every_replica(
    replicas: tuple[Gateway, Gateway], upstream: Upstream, tmp_path: Path
) -> None:
    """`wardgate runs revoke` on an operator's machine: straight into PostgreSQL, NOTIFY wakes replicas."""
    first, second = replicas
    token = first.mint("acme-bot", run="run-77")
    assert status(second, upstream, token) == (200, None)
    env = {**gateway_environ(), "WARDGATE_HOME": str(tmp_path / "operator")}
    done = subprocess.run([sys.executable, "-m", "wardgate.gateway.cli", "--config", str(second.config),
                           "runs", "revoke", "run-77", "--reason", "runaway"],
                          capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "next poll" in done.stdout
    for gw in (first, second):
        wait_for(gw, upstream, token, (407, "identity_revoked"))


def test_replica_cut_off_from_postgres_refuses_with_503_then_recovers(
    opa_binary: str, tmp_path: Path, pg_database: str, acme_policy: Path, upstream_ca_file: Path,
    upstream: Upstream, replicas: tuple[Gateway, Gateway],
) -> None:
    parts = urlsplit(pg_database)
    relay = Relay(parts.hostname or "127.0.0.1", parts.port or 5432)
    relay.start()
    relayed = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{relay.port}"))
    gw = replica(tmp_path / "cut", relayed, acme_policy, upstream_ca_file, keys_from=replicas[0].settings.keys_dir,
                 revocation='poll_interval = "200ms"\nmax_staleness = "2s"\ntimeout = "500ms"')
    try:
        token = gw.mint("acme-bot")
        assert status(gw, upstream, token) == (200, None)
        relay.cut()
        wait_for(gw, upstream, token, (503, "revocation_unavailable"))
        relay.start()
        wait_for(gw, upstream, token, (200, None))
    finally:
        gw.stop()


def test_the_shared_database_is_not_reachable_through_the_proxy(replicas: tuple[Gateway, Gateway], pg_database: str) -> None:
    first, _ = replicas
    port = urlsplit(pg_database).port
    response = requests.get(f"http://127.0.0.1:{port}/allowed/x", proxies={"http": first.proxy_with(first.mint("acme-bot"))},
                            timeout=15)
    assert response.status_code == 403
    assert response.json()["error"]["reasons"] == ["own_listener"]
