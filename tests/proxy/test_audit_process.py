"""The audit writer runs in its own process (gateway/audit_process.py, audit_child.py).

kill -9 it under load: calls fail closed while it is down (503 audit_unavailable, nothing
forwarded), it is restarted, and every call that went out has its intent and its outcome record,
including the outcomes it had been sent but not yet committed. And it never outlives the gateway.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from support import Upstream, start_gateway, wait_until

THREADS, PER_THREAD = 4, 40


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("workers", [1, 2])
def test_a_killed_writer_is_restarted_and_loses_nothing(opa_binary: str, tmp_path: Path, acme_policy: Path,
                                                        upstream: Upstream, workers: int) -> None:
    """With two workers, the second one's records reach the writer over its socket: it must see the
    writer go, refuse calls while it is away, reconnect and send again what was not settled."""
    gateway = start_gateway(tmp_path / "gw", policy_paths=[acme_policy], up_args=["--workers", str(workers)],
                            extra_config="\n[limits]\nrequests_per_second = 100000\nburst = 100000\n")
    try:
        gateway.create_agent("acme-bot", "acme", ["read"])
        proxy = gateway.proxy_with(gateway.mint("acme-bot"))
        first = gateway.audit_writer_pid()
        run = uuid.uuid4().hex
        answered: dict[str, requests.Response] = {}
        lock = threading.Lock()
        started = threading.Barrier(THREADS + 1)

        def client(number: int) -> None:
            session = requests.Session()
            started.wait()
            for call in range(PER_THREAD):
                path = f"/allowed/{run}/{number}/{call}"
                if workers > 1:  # a new connection per call: the kernel spreads them over the workers
                    session.close()
                response = session.get(f"{upstream.http_url}{path}", proxies={"http": proxy}, timeout=15)
                with lock:
                    answered[path] = response
                time.sleep(0.005)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(THREADS)]
        for thread in threads:
            thread.start()
        started.wait()
        assert wait_until(lambda: len(answered) >= 20, timeout=30)
        os.kill(first, signal.SIGKILL)
        for thread in threads:
            thread.join(120)
        assert len(answered) == THREADS * PER_THREAD

        second = gateway.audit_writer_pid()
        assert second != first
        forwarded = [path for path, response in answered.items() if response.status_code == 200]
        refused = [path for path, response in answered.items() if response.status_code != 200]
        assert forwarded, "no call went through"
        for path in refused:  # fail closed while the writer was down
            assert answered[path].status_code == 503, answered[path].text
            assert answered[path].headers["X-Wardgate-Error"] == "audit_unavailable"
            assert upstream.count(path) == 0
        # Every call that went out has both records, the outcomes sent before the kill included.
        def missing() -> list[str]:
            kinds: dict[str, set[str]] = {}
            for record in gateway.records(wait_for=0, timeout=0):
                kinds.setdefault(record["path"], set()).add(record["kind"])
            return [path for path in forwarded if not {"intent", "outcome"} <= kinds.get(path, set())]

        wait_until(lambda: not missing(), timeout=15)
        assert not missing(), f"{len(missing())} forwarded calls lack a record, e.g. {missing()[:3]}"
        assert requests.get(f"{upstream.http_url}/allowed/{run}/after", proxies={"http": proxy}, timeout=15).status_code == 200
    finally:
        gateway.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_what_a_hung_writer_never_settled_is_spooled_at_stop_and_stored_after(
        opa_binary: str, tmp_path: Path, acme_policy: Path, upstream: Upstream, workers: int) -> None:
    """With two workers, each process spools what it sent the hung writer (both append to the one
    spool); the next writer stores all of it."""
    config = '\n[audit]\ncommit_timeout = "400ms"\n'
    gateway = start_gateway(tmp_path / "gw", policy_paths=[acme_policy], extra_config=config,
                            up_args=["--workers", str(workers)])
    call_ids = []
    try:
        gateway.create_agent("acme-bot", "acme", ["read"])
        proxy = gateway.proxy_with(gateway.mint("acme-bot"))
        os.kill(gateway.audit_writer_pid(), signal.SIGSTOP)  # alive, so not restarted, but settles nothing
        for _ in range(6):  # a new connection each: with two workers, the kernel spreads them
            path = f"/allowed/{uuid.uuid4()}"
            response = requests.get(f"{upstream.http_url}{path}", proxies={"http": proxy}, timeout=15)
            assert response.status_code == 503 and response.headers["X-Wardgate-Error"] == "audit_unavailable"
            assert upstream.count(path) == 0
            call_ids.append(response.headers["X-Wardgate-Audit-Id"])
    finally:
        gateway.stop()  # the writer cannot drain: killed after its stop timeout, its records spooled
    spool = gateway.home / "audit-spool.jsonl"
    assert spool.exists() and all(call_id in spool.read_text() for call_id in call_ids)
    again = start_gateway(tmp_path / "gw", policy_paths=[acme_policy], extra_config=config)
    try:
        def stored(call_id: str) -> bool:
            return {r["kind"] for r in again.records(call_id=call_id, wait_for=0, timeout=0)} >= {"intent", "refusal"}

        assert wait_until(lambda: all(stored(call_id) for call_id in call_ids))
        assert wait_until(lambda: not spool.exists() or spool.read_text() == "")
    finally:
        again.stop()


def test_the_writer_never_outlives_the_gateway(opa_binary: str, tmp_path: Path, acme_policy: Path) -> None:
    gateway = start_gateway(tmp_path / "gw", policy_paths=[acme_policy])
    writer = gateway.audit_writer_pid()
    opa = gateway.listeners.get("opa_pid")
    try:
        gateway.process.send_signal(signal.SIGKILL)
        gateway.process.wait(10)
        assert wait_until(lambda: not alive(writer), timeout=15), "the audit writer outlived its gateway"
    finally:
        gateway.stop()
        if opa:  # the managed OPA outlives a SIGKILLed parent
            try:
                os.kill(opa, signal.SIGKILL)
            except ProcessLookupError:
                pass
