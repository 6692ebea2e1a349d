"""``wardgate up --workers 2``: two proxy processes on one port, sharing agents, revocations, the
audit store under one home and the one audit writer process. Real gateway processes, a real
upstream, new connections per call."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import sqlite3
import time
from pathlib import Path

import requests

from support import (
    Gateway,
    Upstream,
    audit_writer_pids,
    environment_of,
    get_on_new_connection,
    start_gateway,
    wait_until,
    write_tenant_policy,
)


def owner_of(client_port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the accepted end of the loopback connection from ``client_port``."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].rsplit(":", 1)[1], 16) != client_port:
            continue
        target = f"socket:[{fields[9]}]"
        for pid in pids:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if os.readlink(fd) == target:
                        return pid
                except OSError:
                    continue
    return None


def test_two_workers_share_the_port_and_the_state(tmp_path: Path, upstream: Upstream) -> None:
    policy = write_tenant_policy(tmp_path / "policy", "acme", [{"host": "127.0.0.1", "methods": ["GET"]}])
    gw = start_gateway(tmp_path / "gw", policy_paths=[policy], up_args=["--workers", "2"])
    try:
        workers = gw.listeners["workers"]
        assert len(workers) == 1 and all(os.path.exists(f"/proc/{pid}") for pid in workers)
        gw.create_agent("bot", "acme", ["read"])
        token = gw.mint("bot", ttl=600)
        # A new connection per call: the kernel spreads them over both listening sockets.
        accepted_by: list[int | None] = []
        for _ in range(40):
            connection = get_on_new_connection(gw, f"{upstream.http_url}/w", token)
            accepted_by.append(owner_of(connection.sock.getsockname()[1], [gw.process.pid, *workers]))
            connection.close()
        assert set(accepted_by) == {gw.process.pid, workers[0]}, "the kernel gave both processes connections"
        # Without a token every worker refuses the same way (407), whichever one accepted.
        for _ in range(10):
            with requests.Session() as session:
                response = session.get(f"{upstream.http_url}/w", proxies={"http": gw.proxy}, timeout=10)
                assert response.status_code == 407
        records = gw.records(wait_for=100)
        served = {record["call_id"] for record in records if record["kind"] == "outcome"}
        assert len(served) == 40, "every forwarded call has its outcome, whichever worker served it"
        with sqlite3.connect(gw.settings.audit_db) as conn:
            writers = {row[0] for row in conn.execute("SELECT DISTINCT writer FROM audit_records")}
        assert len(writers) == 1, "both workers' records went to the gateway's one writer: one chain"
        assert len(audit_writer_pids(gw.process.pid)) == 1 and not audit_writer_pids(workers[0])
        threads = os.environ.get("GOMAXPROCS", "1")
        assert environment_of(int(gw.listeners["opa_pid"]), "GOMAXPROCS") == threads, "one OPA thread per two workers"
    finally:
        gw.stop()
    assert all(not os.path.exists(f"/proc/{pid}") or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
               for pid in workers), "stopping the gateway stops its workers"


def test_two_workers_share_an_agents_rate_limit(tmp_path: Path, upstream: Upstream) -> None:
    """An agent's token bucket is the gateway's, not a worker's: with its calls spread over two
    workers it still gets ``burst`` calls at once, not twice that."""
    burst = 10
    policy = write_tenant_policy(tmp_path / "policy", "acme", [{"host": "127.0.0.1", "methods": ["GET"]}])
    gw = start_gateway(tmp_path / "gw", policy_paths=[policy], up_args=["--workers", "2"],
                       extra_config=f"\n[limits]\nrequests_per_second = 0.2\nburst = {burst}\n")
    try:
        workers = gw.listeners["workers"]
        gw.create_agent("bot", "acme", ["read"])
        basic = "Basic " + base64.b64encode(f"agent:{gw.mint('bot', ttl=600)}".encode()).decode()
        statuses: dict[int, list[int]] = {gw.process.pid: [], workers[0]: []}
        for _ in range(40):  # a new connection each, so the kernel spreads them over both workers
            connection = http.client.HTTPConnection(*gw.listeners["proxy"].rsplit(":", 1), timeout=10)
            connection.request("GET", f"{upstream.http_url}/w", headers={"Proxy-Authorization": basic})
            response = connection.getresponse()
            response.read()
            owner = owner_of(connection.sock.getsockname()[1], list(statuses))
            assert owner is not None
            statuses[owner].append(response.status)
            connection.close()
        assert all(statuses.values()), "the kernel gave both processes connections"
        allowed = sum(status == 200 for served in statuses.values() for status in served)
        refused = sum(status == 429 for served in statuses.values() for status in served)
        # 40 calls within a few seconds at 0.2/s: the burst, and at most a token or two that came back.
        assert burst <= allowed <= burst + 2 and allowed + refused == 40, statuses
    finally:
        gw.stop()


def test_two_workers_share_an_agents_tunnel_limit_and_a_dead_workers_tunnels_are_released(
        tmp_path: Path, upstream: Upstream) -> None:
    limit = 4
    policy = write_tenant_policy(tmp_path / "policy", "acme", [{"host": "localhost", "methods": ["GET"]}])
    gw = start_gateway(tmp_path / "gw", policy_paths=[policy], up_args=["--workers", "2"],
                       extra_config=f"\n[limits]\nmax_tunnels_per_agent = {limit}\n")
    held: dict[socket.socket, int] = {}  # open tunnel -> the process that holds it
    try:
        worker = gw.listeners["workers"][0]
        gw.create_agent("bot", "acme", ["read"])
        basic = "Basic " + base64.b64encode(f"agent:{gw.mint('bot', ttl=600)}".encode()).decode()
        target = f"localhost:{upstream.https_port}"

        def tunnel() -> tuple[socket.socket, bytes, int | None]:
            sock = socket.create_connection(("127.0.0.1", int(gw.listeners["proxy"].rsplit(":", 1)[1])), timeout=10)
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {basic}\r\n\r\n".encode())
            answer = sock.recv(4096)
            return sock, answer, owner_of(sock.getsockname()[1], [gw.process.pid, worker])

        refused = 0
        for _ in range(60):  # until the limit is held with at least one tunnel in each process
            sock, answer, owner = tunnel()
            if answer.startswith(b"HTTP/1.1 200"):
                assert owner is not None
                held[sock] = owner
            else:
                assert answer.startswith(b"HTTP/1.1 429") and b"too_many_tunnels" in answer, answer[:200]
                refused += 1
                sock.close()
                if len(set(held.values())) < 2:  # all in one process: give one back, try again
                    first = next(s for s, o in held.items() if o == next(iter(held.values())))
                    first.close()
                    del held[first]
                    time.sleep(0.2)
            if len(held) == limit and len(set(held.values())) == 2:
                break
        assert len(held) == limit and set(held.values()) == {gw.process.pid, worker}, held
        sock, answer, _ = tunnel()
        sock.close()
        assert answer.startswith(b"HTTP/1.1 429"), "the limit holds across both workers"
        on_worker = sum(owner == worker for owner in held.values())
        os.kill(worker, signal.SIGKILL)  # its tunnels die with it, and the gateway gives their count back
        for sock in [s for s, o in held.items() if o == worker]:
            sock.close()
            del held[sock]
        deadline = time.monotonic() + 10
        again: list[socket.socket] = []
        while len(again) < on_worker and time.monotonic() < deadline:
            try:
                sock, answer, _ = tunnel()
            except ConnectionResetError:  # accepted by the dying worker just before it went
                continue
            if answer.startswith(b"HTTP/1.1 200"):
                again.append(sock)
            else:
                sock.close()
                time.sleep(0.1)
        held.update({sock: gw.process.pid for sock in again})
        assert len(again) == on_worker, "the dead worker's tunnels were released"
        sock, answer, _ = tunnel()
        sock.close()
        assert answer.startswith(b"HTTP/1.1 429"), "and no more than those"
    finally:
        for sock in held:
            sock.close()
        gw.stop()


def listening_ports(pid: int) -> dict[str, set[int]]:
    """The TCP ports ``pid`` listens on, by table: /proc/net/tcp (IPv4) and tcp6 (IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    ports: dict[str, set[int]] = {}
    for table in ("tcp", "tcp6"):
        ports[table] = {int(fields[1].rsplit(":", 1)[1], 16)
                        for fields in (line.split() for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:])
                        if fields[3] == "0A" and fields[9] in inodes}
    return ports


def test_every_worker_listens_on_every_address_the_host_names(tmp_path: Path) -> None:
    """``[proxy.listen] host = ""`` is every interface, IPv4 and IPv6: each worker binds what the
    first process binds, on its port (they used to bind only the first address it reported)."""
    policy = write_tenant_policy(tmp_path / "policy", "acme", [{"host": "127.0.0.1", "methods": ["GET"]}])
    gw = start_gateway(tmp_path / "gw", policy_paths=[policy], up_args=["--workers", "2"], proxy_listen=None,
                       extra_config='\n[proxy.listen]\nhost = ""\nport = 0\n')
    try:
        port = int(gw.listeners["proxy"].rsplit(":", 1)[1])
        families = {info[0] for info in socket.getaddrinfo(None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)}
        tables = {"tcp"} | ({"tcp6"} if socket.AF_INET6 in families else set())
        for pid in [gw.process.pid, *gw.listeners["workers"]]:
            bound = listening_ports(pid)
            assert all(port in bound[table] for table in tables), (pid, bound, port)
    finally:
        gw.stop()


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_never_outlive_the_gateway(tmp_path: Path) -> None:
    """kill -9 of the first process: its worker goes too, rather than keep the port and refuse
    every call it is given (its audit writer went with the gateway)."""
    policy = write_tenant_policy(tmp_path / "policy", "acme", [{"host": "127.0.0.1", "methods": ["GET"]}])
    gw = start_gateway(tmp_path / "gw", policy_paths=[policy], up_args=["--workers", "2"])
    worker = gw.listeners["workers"][0]
    opa = gw.listeners.get("opa_pid")
    try:
        assert alive(worker)
        gw.process.send_signal(signal.SIGKILL)
        gw.process.wait(10)
        deadline = time.monotonic() + 20
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(worker), "the worker outlived its gateway"
    finally:
        gw.stop()
        for pid in (worker, opa):  # the managed OPA outlives a SIGKILLed parent
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)


def status_on_new_connection(gw: Gateway, url: str, token: str) -> tuple[int, int | None]:
    """(status, pid of the process that accepted) of one GET through the proxy on its own connection."""
    connection = http.client.HTTPConnection(*gw.listeners["proxy"].rsplit(":", 1), timeout=10)
    basic = "Basic " + base64.b64encode(f"agent:{token}".encode()).decode()
    try:
        connection.request("GET", url, headers={"Proxy-Authorization": basic})
        response = connection.getresponse()
        response.read()
        return response.status, owner_of(connection.sock.getsockname()[1], [gw.process.pid, *gw.listeners["workers"]])
    finally:
        connection.close()


def test_every_worker_follows_a_policy_reload(tmp_path: Path, upstream: Upstream) -> None:
    """A reload starts a new OPA on another port and stops the old one after a grace period. Every
    worker must move to the new one, and none may answer from decisions the old policy made (each
    process remembers decisions: gateway/decision_cache.py)."""
    policy = write_tenant_policy(tmp_path / "policy", "acme", [{"host": "127.0.0.1", "methods": ["GET"], "paths": ["/open"]}])
    gw = start_gateway(tmp_path / "gw", policy_paths=[policy], up_args=["--workers", "2"],
                       env={"WARDGATE_OPA__WATCH_INTERVAL": "0.2"})
    try:
        gw.create_agent("bot", "acme", ["read"])
        token = gw.mint("bot", ttl=600)
        both = {gw.process.pid, *gw.listeners["workers"]}
        before = [status_on_new_connection(gw, f"{upstream.http_url}/closed/x", token) for _ in range(30)]
        assert {status for status, _ in before} == {403} and {pid for _, pid in before} == both
        first_opa = gw.listeners["opa"]

        write_tenant_policy(policy, "acme", [{"host": "127.0.0.1", "methods": ["GET"], "paths": ["/open", "/closed"]}])
        listeners_file = gw.settings.run_dir / "listeners.json"
        assert wait_until(lambda: json.loads(listeners_file.read_text())["opa"] != first_opa), "policy reloaded"
        time.sleep(3.0)  # past the old OPA's grace period ([opa] timeout + 2 s): it is gone now

        after = [status_on_new_connection(gw, f"{upstream.http_url}/closed/x", token) for _ in range(30)]
        assert {pid for _, pid in after} == both, "the kernel gave both processes connections"
        assert {status for status, _ in after} == {200}, f"answered {sorted(after)}"
    finally:
        gw.stop()
    assert "policy_unavailable" not in gw.log.read_text()
