"""kill -9 the gateway under concurrent load: every response a client received has its intent record.

Runs on both backends. Bounded load on loopback: 6 client threads, at most 60 calls each; the gateway is killed once 60
responses have come back. Afterwards ``wardgate audit verify`` must accept the store (nothing was
tampered with) and say honestly that the chain was interrupted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import requests

from audit_backends import Store, store  # noqa: F401  (the fixture)
from support import Upstream, start_gateway

THREADS, PER_THREAD, KILL_AFTER = 6, 60, 60


def test_kill_9_under_load_loses_no_intent(opa_binary: str, tmp_path: Path, acme_policy: Path, upstream: Upstream,
                                           store: Store) -> None:
    gateway = start_gateway(store.home.parent, policy_paths=[acme_policy], extra_config="\n[audit]\n" + store.config)
    gateway.create_agent("acme-bot", "acme", ["read"])
    proxy = gateway.proxy_with(gateway.mint("acme-bot"))
    received: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()
    run = uuid.uuid4().hex

    def client(number: int) -> None:
        session = requests.Session()
        for call in range(PER_THREAD):
            try:
                response = session.get(f"{upstream.http_url}/allowed/{run}/{number}/{call}", proxies={"http": proxy}, timeout=10)
            except requests.RequestException:
                return  # the gateway is gone
            if response.status_code == 200:
                with lock:
                    received.append(response.headers["X-Wardgate-Audit-Id"])
                    if len(received) >= KILL_AFTER:
                        enough.set()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    try:
        assert enough.wait(120), f"only {len(received)} responses before the deadline"
        gateway.process.send_signal(signal.SIGKILL)
        gateway.process.wait(10)
    finally:
        for thread in threads:
            thread.join(30)
        gateway.stop()
        if gateway.listeners.get("opa_pid"):  # it ends with its gateway (test_opa_process.py); if not, here
            try:
                os.kill(gateway.listeners["opa_pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass

    conn = store.connect()
    intents = {row["call_id"] for row in conn.execute("SELECT call_id FROM audit_records WHERE kind = 'intent'").fetchall()}
    conn.close()
    missing = [call for call in received if call not in intents]
    assert len(received) >= KILL_AFTER and not missing

    done = subprocess.run([sys.executable, "-m", "wardgate.gateway.cli", "--home", str(gateway.home), "audit", "verify"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=store.environ())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no clean stop" in done.stdout and "interrupted" in done.stdout
    assert "VALID" in done.stdout
