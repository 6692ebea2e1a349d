"""The managed OPA is reached only through a Unix socket in the gateway's private run folder.

On a loopback port any local process could have changed the policies OPA serves (its REST API has
no authentication) or bound the port first and answered every decision itself."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import requests

from audit_backends import agent_ready
from support import Gateway, Upstream, opa_get, start_gateway
from wardgate.gateway.opa_address import unix_socket


def listening_tcp_inodes() -> set[str]:
    """Inodes of every listening TCP socket on this host (IPv4 and IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def test_the_managed_opa_has_a_private_socket_and_no_port(gateway: Gateway, upstream: Upstream) -> None:
    path = unix_socket(gateway.listeners["opa"])
    assert path is not None, gateway.listeners["opa"]
    assert Path(path).parent == gateway.settings.run_dir
    assert stat.S_ISSOCK(os.stat(path).st_mode) and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(gateway.settings.run_dir).st_mode) == 0o700
    assert opa_get(gateway.listeners["opa"], "/health")[0] == 200
    opa = int(gateway.live_listeners()["opa_pid"])  # another test may have had it restarted
    assert socket_inodes(opa), "OPA holds its socket"
    assert not socket_inodes(opa) & listening_tcp_inodes(), "OPA listens on a TCP port"
    # and the gateway decides through it
    proxy = gateway.proxy_with(gateway.mint("acme-bot"))
    assert requests.get(f"{upstream.http_url}/allowed/x", proxies={"http": proxy}, timeout=10).status_code == 200


def test_a_home_too_deep_for_a_socket_path_gets_a_private_temp_folder(opa_binary: str, tmp_path: Path,
                                                                      acme_policy: Path, upstream: Upstream) -> None:
    home = tmp_path / ("d" * 60) / ("e" * 60)
    # Two workers: the audit writer's socket for them takes the same way out (gateway/socket_folder.py).
    gateway = start_gateway(home, policy_paths=[acme_policy], up_args=["--workers", "2"])
    try:
        path = Path(unix_socket(gateway.listeners["opa"]) or "")
        assert len(os.fsencode(gateway.settings.run_dir / path.name)) > 100
        assert path.parent.name.startswith("wardgate-opa-") and stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
        gateway.create_agent("acme-bot", "acme", ["read"])
        agent_ready(gateway, upstream.http_url, "acme-bot")
        proxy = gateway.proxy_with(gateway.mint("acme-bot"))
        for _ in range(6):  # new connections, spread over both processes
            assert requests.get(f"{upstream.http_url}/allowed/x", proxies={"http": proxy}, timeout=10).status_code == 200
    finally:
        gateway.stop()
    assert not path.parent.exists(), "the temp folder is removed at stop"


def test_sockets_of_a_killed_opa_are_removed_at_start(opa_binary: str, tmp_path: Path, acme_policy: Path) -> None:
    """OPA removes its socket when it stops, not when it is killed with its gateway (SIGKILL)."""
    run = tmp_path / "home" / "run"
    run.mkdir(parents=True, mode=0o700)
    dead = run / "opa-004.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as left:
        left.bind(str(dead))  # bound and closed: the file stays, nothing listens behind it
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(run / "opa-009.sock"))
        live.listen()
        gateway = start_gateway(tmp_path, policy_paths=[acme_policy])
        try:
            assert not dead.exists(), "the dead socket is gone"
            assert (run / "opa-009.sock").exists(), "a socket something listens on is left alone"
            assert opa_get(gateway.listeners["opa"], "/health")[0] == 200
        finally:
            gateway.stop()
