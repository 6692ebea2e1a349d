"""The audit database full, for real, two ways:

- ``tmpfs``: the gateway's home on a small tmpfs, filled up by another file (ENOSPC; SQLite answers
  SQLITE_FULL). Needs the right to mount (root); skipped without it.
- ``file_size_limit``: the gateway process may not grow its files (RLIMIT_FSIZE, what a quota does;
  SQLite answers with an I/O error). Runs unprivileged.

Either way calls fail closed with 503 ``audit_unavailable``, nothing is forwarded, the refusals reach
the store once it can grow again (the spool lives on another filesystem), and calls resume without a
restart.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from support import Gateway, Upstream, start_gateway


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> None:
    """Write ``path`` until the filesystem has not one byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


@pytest.mark.parametrize("how", ["tmpfs", "file_size_limit"])
def test_a_full_audit_database_fails_closed_is_audited_and_recovers(
    how: str, opa_binary: str, tmp_path: Path, acme_policy: Path, upstream_ca_file: Path, upstream: Upstream
) -> None:
    root = tmp_path / "mnt"
    spool = tmp_path / "spool" / "audit-spool.jsonl"  # the spool must not share the full filesystem
    spool.parent.mkdir()
    with tmpfs(root, "24m") if how == "tmpfs" else contextlib.nullcontext():
        gateway = start_gateway(root / "gw", policy_paths=[acme_policy], upstream_ca=upstream_ca_file,
                                extra_config=f'\n[audit]\ncommit_timeout = "400ms"\nspool_file = "{spool}"\n')
        try:
            gateway.create_agent("acme-bot", "acme", ["read"])
            exercise(gateway, upstream, *fullness(how, gateway, root))
        finally:
            gateway.stop()
            (tmp_path / "gateway.log").write_bytes(gateway.log.read_bytes())  # outlives the tmpfs


def fullness(how: str, gateway: Gateway, root: Path) -> tuple[Callable[[], None], Callable[[], None]]:
    if how == "tmpfs":
        filler = root / "filler"
        return (lambda: fill(filler)), (lambda: filler.unlink())
    pid = gateway.audit_writer_pid()  # the process that writes the audit database
    before = resource.prlimit(pid, resource.RLIMIT_FSIZE)

    def full() -> None:  # no file may grow past the audit database's current size
        limit = max(p.stat().st_size for p in gateway.home.glob("audit.db*"))
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, before[1]))

    return full, (lambda: resource.prlimit(pid, resource.RLIMIT_FSIZE, before))


def exercise(gateway: Gateway, upstream: Upstream, make_full: Callable[[], None], make_room: Callable[[], None]) -> None:
    proxies = {"http": gateway.proxy_with(gateway.mint("acme-bot"))}
    assert requests.get(f"{upstream.http_url}/allowed/warm", proxies=proxies, timeout=10).status_code == 200
    make_full()
    refused: list[tuple[str, requests.Response]] = []
    try:
        for _ in range(400):
            path = f"/allowed/full/{uuid.uuid4()}"
            response = requests.get(f"{upstream.http_url}{path}?pad={'x' * 2000}", proxies=proxies, timeout=10)
            if response.status_code == 503:
                refused.append((path, response))
                if len(refused) >= 3:
                    break
            else:
                assert response.status_code == 200, response.text
        assert refused, "the store never filled up"
        for path, response in refused:
            assert response.headers["X-Wardgate-Error"] == "audit_unavailable"
            assert upstream.count(path) == 0  # fail closed: nothing forwarded without its intent record
    finally:
        make_room()
    deadline = time.monotonic() + 30
    while True:
        path = f"/allowed/after-full/{uuid.uuid4()}"
        response = requests.get(f"{upstream.http_url}{path}", proxies=proxies, timeout=10)
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert response.status_code == 200 and upstream.count(path) == 1
    assert gateway.process.poll() is None and os.path.exists(gateway.home)
    for _, refusal in refused:
        records = gateway.records(refusal.headers["X-Wardgate-Audit-Id"], timeout=15)
        assert [(r["kind"], r["error"]) for r in records] == [("refusal", "audit_unavailable")]
