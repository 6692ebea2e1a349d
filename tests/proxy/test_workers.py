"""``wardgate up --workers 2``: two proxy processes on one port, sharing agents, revocations and the
audit store under one home. Real gateway processes, a real upstream, new connections per call."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import requests

from support import Upstream, start_gateway, write_tenant_policy


def test_two_workers_share_the_port_and_the_state(tmp_path: Path, upstream: Upstream) -> None:
    policy = write_tenant_policy(tmp_path / "policy", "acme", [{"host": "127.0.0.1", "methods": ["GET"]}])
    gw = start_gateway(tmp_path / "gw", policy_paths=[policy], up_args=["--workers", "2"])
    try:
        workers = gw.listeners["workers"]
        assert len(workers) == 1 and all(os.path.exists(f"/proc/{pid}") for pid in workers)
        gw.create_agent("bot", "acme", ["read"])
        token = gw.mint("bot", ttl=600)
        proxies = {"http": gw.proxy_with(token)}
        # A new connection per call: the kernel spreads them over both listening sockets.
        for _ in range(40):
            with requests.Session() as session:
                assert session.get(f"{upstream.http_url}/w", proxies=proxies, timeout=10).status_code == 200
        # Without a token every worker refuses the same way (407), whichever one accepted.
        for _ in range(10):
            with requests.Session() as session:
                response = session.get(f"{upstream.http_url}/w", proxies={"http": gw.proxy}, timeout=10)
                assert response.status_code == 407
        gw.records(wait_for=100)
        with sqlite3.connect(gw.settings.audit_db) as conn:
            writers = {row[0] for row in conn.execute("SELECT DISTINCT writer FROM audit_records WHERE kind = 'outcome'")}
        assert len(writers) == 2, "both workers served calls and wrote their own audit chain"
    finally:
        gw.stop()
    assert all(not os.path.exists(f"/proc/{pid}") or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
               for pid in workers), "stopping the gateway stops its workers"
