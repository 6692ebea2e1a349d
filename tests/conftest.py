"""Shared fixtures: real OPA, real loopback upstreams, real gateway processes."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme

from counting import CountingUpstream
from support import (
    POLICIES,
    REPO,
    Gateway,
    OpaServer,
    Upstream,
    require,
    start_gateway,
    start_gateway_on_opa,
    write_tenant_policy,
)
from wardgate.gateway.audit_writer import AuditWriter

# The make targets put the pinned OPA here; tests run straight from pytest find it too.
os.environ["PATH"] = f"{REPO / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture(scope="session")
def opa_binary() -> str:
    found = shutil.which("opa")
    require("the opa binary (make setup builds it)", found is not None)
    assert found
    return found


@pytest.fixture(scope="session")
def test_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def upstream_ca_file(test_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "upstream-ca.pem"
    test_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def upstream(test_ca: trustme.CA) -> Iterator[Upstream]:
    server = Upstream(test_ca)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def acme_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tenant 'acme' may call loopback under /allowed and /status; everything else is denied."""
    rules = [
        {"host": host, "methods": ["GET", "POST"], "paths": ["/allowed", "/status"]}
        for host in ("127.0.0.1", "localhost")
    ]
    return write_tenant_policy(tmp_path_factory.mktemp("policy-data"), "acme", rules)


@pytest.fixture(scope="session")
def gateway(
    opa_binary: str, tmp_path_factory: pytest.TempPathFactory, acme_policy: Path, upstream_ca_file: Path
) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("gateway"), policy_paths=[acme_policy], upstream_ca=upstream_ca_file)
    gw.create_agent("acme-bot", "acme", ["read", "write"])
    yield gw
    gw.stop()


@pytest.fixture
def counting() -> Iterator[CountingUpstream]:
    """An upstream that counts the requests it gets (tests/counting.py), per test."""
    server = CountingUpstream()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def external_opa(opa_binary: str, acme_policy: Path) -> Iterator[OpaServer]:
    """A standalone OPA on a loopback port, loaded with the default policy and the acme rules."""
    server = OpaServer([POLICIES, acme_policy])
    server.start()
    yield server
    server.kill()


@pytest.fixture
def gateway_on_external_opa(
    tmp_path: Path, external_opa: OpaServer, upstream_ca_file: Path, acme_policy: Path
) -> Iterator[Gateway]:
    """A gateway asking ``external_opa`` (``[opa] mode = "external"``), with agent acme-bot."""
    gw = start_gateway_on_opa(tmp_path, external_opa, upstream_ca_file)
    yield gw
    gw.stop()


@pytest.fixture
async def audit_writer(tmp_path: Path) -> AsyncIterator[AuditWriter]:
    """A real audit writer: its thread, SQLite at ``tmp_path / "audit.db"``."""
    writer = AuditWriter(tmp_path / "audit.db", busy_timeout=0.1)
    writer.start()
    yield writer
    await writer.stop()
