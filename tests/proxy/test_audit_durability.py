"""No record, no forwarding; and no outcome lost when the store fails after the upstream answered.

The audit store is made unwritable for real: a second connection holds the write lock (SQLite
``BEGIN EXCLUSIVE``; PostgreSQL ``LOCK TABLE ... IN EXCLUSIVE MODE``), exactly what a stuck writer
or a long-running maintenance job would do. Runs on both backends.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web

from audit_backends import BACKENDS, Store, agent_ready, open_store
from support import Gateway, LoopbackServer, Upstream, start_gateway, wait_until


class StoreLock:
    """Holds the audit store's write lock from another connection until released."""

    def __init__(self, store: Store) -> None:
        self._postgres = store.dsn is not None
        if self._postgres:
            import psycopg

            self._conn: Any = psycopg.connect(store.dsn)
        else:
            self._conn = sqlite3.connect(store.home / "audit.db", timeout=10, isolation_level=None, check_same_thread=False)
        self.held = False

    def acquire(self) -> None:
        if self._postgres:
            self._conn.execute("LOCK TABLE audit_records, audit_checkpoints IN EXCLUSIVE MODE")
        else:
            self._conn.execute("BEGIN EXCLUSIVE")
        self.held = True

    def release(self) -> None:
        if self.held:
            self._conn.rollback() if self._postgres else self._conn.execute("ROLLBACK")
            self.held = False

    def close(self) -> None:
        self.release()
        self._conn.close()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest, opa_binary: str, tmp_path_factory: pytest.TempPathFactory, acme_policy: Path,
            upstream_ca_file: Path, upstream: Upstream) -> Iterator[tuple[Gateway, Store]]:
    root = tmp_path_factory.mktemp("gw-durability")
    with open_store(request.param, root / "home") as store:
        gw = start_gateway(root, policy_paths=[acme_policy], upstream_ca=upstream_ca_file,
                           extra_config='\n[audit]\ncommit_timeout = "400ms"\n' + store.config)
        gw.create_agent("acme-bot", "acme", ["read"])
        agent_ready(gw, upstream.http_url, "acme-bot")
        yield gw, store
        gw.stop()


@pytest.fixture
def gateway(backend: tuple[Gateway, Store]) -> Gateway:
    return backend[0]


def ready(gateway: Gateway) -> bool:
    return requests.get(f"{gateway.admin}/readyz", timeout=5).status_code == 200


def spool_file(gateway: Gateway) -> Path:
    return gateway.home / "audit-spool.jsonl"


def test_intent_that_cannot_be_committed_means_503_and_nothing_leaves(backend: tuple[Gateway, Store], upstream: Upstream) -> None:
    gateway, store = backend
    path = f"/allowed/{uuid.uuid4()}"
    proxy = gateway.proxy_with(gateway.mint("acme-bot"))
    assert wait_until(lambda: ready(gateway))
    lock = StoreLock(store)
    lock.acquire()
    try:
        response = requests.get(f"{upstream.http_url}{path}", proxies={"http": proxy}, timeout=15)
        assert response.status_code == 503
        assert response.headers["X-Wardgate-Error"] == "audit_unavailable"
        call_id = response.json()["error"]["audit_id"]
        assert call_id and response.headers["X-Wardgate-Audit-Id"] == call_id
        assert upstream.count(path) == 0
        # The refusal itself could not be stored either: it waits in the spool, and the replica says so.
        assert wait_until(lambda: not ready(gateway))
        # An earlier outcome still waiting to be committed may reach the spool first: wait for the refusal.
        assert wait_until(lambda: spool_file(gateway).exists() and call_id in spool_file(gateway).read_text())
    finally:
        lock.release()
        lock.close()
    assert wait_until(lambda: ready(gateway))
    refusal = [r for r in gateway.records(call_id, wait_for=1) if r["kind"] == "refusal"]
    assert refusal and refusal[0]["error"] == "audit_unavailable" and refusal[0]["status"] == 503
    assert not spool_file(gateway).exists()
    assert upstream.count(path) == 0


@pytest.fixture
def locking_upstream(backend: tuple[Gateway, Store]) -> Iterator[tuple[str, StoreLock, list[str]]]:
    """An upstream that takes the audit store's write lock while answering: the outcome cannot be written."""
    lock = StoreLock(backend[1])
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.path)
        await asyncio.to_thread(lock.acquire)
        return web.json_response({"answered": True})

    def build() -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app

    server = LoopbackServer(build, [None])
    (port,) = server.start()
    yield f"http://127.0.0.1:{port}", lock, seen
    lock.close()
    server.stop()


def test_outcome_the_store_refuses_is_delivered_spooled_and_replayed(
    gateway: Gateway, locking_upstream: tuple[str, StoreLock, list[str]]
) -> None:
    url, lock, seen = locking_upstream
    path = f"/allowed/{uuid.uuid4()}"
    assert wait_until(lambda: ready(gateway))
    response = requests.get(f"{url}{path}", proxies={"http": gateway.proxy_with(gateway.mint("acme-bot"))}, timeout=15)
    try:
        assert response.status_code == 200 and response.json() == {"answered": True}  # delivered regardless
        call_id = response.headers["X-Wardgate-Audit-Id"]
        assert seen == [path]
        assert wait_until(lambda: not ready(gateway))
        spooled = [json.loads(line) for line in spool_file(gateway).read_text().splitlines()]
        assert any(r["call_id"] == call_id and r["kind"] == "outcome" and r["status"] == 200 for r in spooled)
        assert [r["kind"] for r in gateway.records(call_id, wait_for=1)] == ["intent"]  # committed before forwarding
    finally:
        lock.release()
    assert wait_until(lambda: ready(gateway))
    records = gateway.records(call_id, wait_for=2)
    assert [r["kind"] for r in records] == ["intent", "outcome"]
    assert records[1]["status"] == 200
    assert not spool_file(gateway).exists()
