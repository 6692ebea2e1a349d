"""Several gateway replicas writing to one PostgreSQL audit store at once: one verifiable chain each."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from pathlib import Path

import requests

from audit_backends import agent_ready, open_store
from support import Upstream, start_gateway

REPLICAS, THREADS, CALLS = 3, 2, 15


def test_replicas_share_the_store_and_each_keeps_its_own_chain(opa_binary: str, tmp_path: Path, acme_policy: Path,
                                                               upstream: Upstream) -> None:
    with open_store("postgres", tmp_path / "shared-home") as store:
        # Each replica has its own state folder and checkpoint key; all share the audit database.
        gateways = [start_gateway(tmp_path / f"replica-{n}", policy_paths=[acme_policy],
                                  extra_config="\n[audit]\n" + store.config) for n in range(REPLICAS)]
        try:
            for gateway in gateways:
                gateway.create_agent("acme-bot", "acme", ["read"])
                agent_ready(gateway, upstream.http_url, "acme-bot")
            run = uuid.uuid4().hex
            received: list[str] = []
            lock = threading.Lock()

            def client(gateway_index: int, number: int) -> None:
                gateway = gateways[gateway_index]
                proxy = gateway.proxy_with(gateway.mint("acme-bot"))
                with requests.Session() as session:
                    for call in range(CALLS):
                        response = session.get(f"{upstream.http_url}/allowed/{run}/{gateway_index}/{number}/{call}",
                                               proxies={"http": proxy}, timeout=15)
                        assert response.status_code == 200
                        with lock:
                            received.append(response.headers["X-Wardgate-Audit-Id"])

            threads = [threading.Thread(target=client, args=(g, n)) for g in range(REPLICAS) for n in range(THREADS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
            assert len(received) == REPLICAS * THREADS * CALLS
        finally:
            for gateway in gateways:
                gateway.stop()

        conn = store.connect()
        writers = conn.execute("SELECT writer, COUNT(*) AS n FROM audit_records WHERE path LIKE ? GROUP BY writer",
                               (f"/allowed/{run}/%",)).fetchall()
        stored = {r["call_id"] for r in conn.execute("SELECT call_id FROM audit_records WHERE kind = 'outcome'").fetchall()}
        conn.close()
        assert len(writers) == REPLICAS and all(w["n"] == 2 * THREADS * CALLS for w in writers)
        assert set(received) <= stored

        # Every replica's public checkpoint key is trusted; each chain must verify and be closed cleanly.
        keys = [str(g.home / "audit-keys" / "checkpoint.pub") for g in gateways]
        done = subprocess.run(
            [sys.executable, "-m", "wardgate.gateway.cli", "--home", str(store.home), "audit", "verify",
             *[arg for key in keys for arg in ("--public-key", key)]],
            capture_output=True, text=True, timeout=120, cwd=tmp_path, env=store.environ())
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.count(": ok —") == REPLICAS and done.stdout.count("closed") == REPLICAS
        assert "VALID" in done.stdout
