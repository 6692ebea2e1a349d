"""``wardgate up``: start the gateway (proxy, admin API, managed OPA)."""

from __future__ import annotations

import logging
import os
import shlex
import sys

import click

from ..agents import AgentRegistry
from ..ca import ensure_ca
from ..errors import NotFound
from ..identity import TokenIssuer
from ..keys import KeyRing
from ..settings import Settings
from ._context import CliContext, pass_cli


def ensure_demo_agent(settings: Settings) -> None:
    registry = AgentRegistry(settings.state_db)
    try:
        registry.get(settings.demo.agent)
    except NotFound:
        registry.create(settings.demo.agent, settings.demo.tenant, ["read"], owner="wardgate demo")
    finally:
        registry.close()


def banner(settings: Settings, listeners: object) -> str:
    proxy = getattr(listeners, "proxy")
    lines = [
        "wardgate is up",
        f"  proxy      http://{proxy}",
        f"  admin API  http://{getattr(listeners, 'admin')}   (admin token: {settings.home / 'admin.token'})",
        f"  CA to trust {settings.ca_dir / 'wardgate-ca.pem'}   (wardgate ca path)",
        "  audit      wardgate audit query",
    ]
    echo = getattr(listeners, "echo", None)
    if settings.demo.enabled and echo:
        token = TokenIssuer(KeyRing.load(settings.keys_dir), settings.identity).mint(
            agent=settings.demo.agent, tenant=settings.demo.tenant, user=settings.demo.user, scopes=("read",)
        )
        proxy_url = shlex.quote(f"http://agent:{token}@{proxy}")
        lines += [
            "",
            f"Try it (demo agent {settings.demo.agent!r} acting for {settings.demo.user!r}; token valid "
            f"{int(settings.identity.default_ttl // 60)} min):",
            "",
            "  # allowed: the demo policy lets tenant 'demo' read from the local echo service",
            f"  curl -sS -x {proxy_url} http://{echo}/hello",
            "",
            "  # denied by policy (403 policy_denied), nothing leaves the machine",
            f"  curl -sS -x {proxy_url} http://example.com/",
            "",
            "  # no identity (407)",
            f"  curl -sS -x http://{proxy} http://{echo}/hello",
            "",
            "Point an agent at it: HTTP_PROXY / HTTPS_PROXY = http://agent:<token>@" + proxy
            + "; trust the CA above (SSL_CERT_FILE, REQUESTS_CA_BUNDLE, NODE_EXTRA_CA_CERTS).",
        ]
    return "\n".join(lines)


@click.command()
@click.option("--proxy-listen", help="HOST:PORT for the proxy (default 127.0.0.1:8080; port 0 picks one).")
@click.option("--admin-listen", help="HOST:PORT for the admin API (default 127.0.0.1:8081).")
@click.option("--log-level", default="warning", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Proxy processes sharing the proxy port (SO_REUSEPORT) and the state under home.")
@click.option("--worker-of", hidden=True, help="Internal: run as a proxy-only worker of another process.")
@pass_cli
def up(cli: CliContext, proxy_listen: str | None, admin_listen: str | None, log_level: str, workers: int,
       worker_of: str | None) -> None:
    """Start the gateway. With no config file, runs the embedded demo default."""
    run_optimised()
    overrides: dict[str, object] = {"proxy_listen": proxy_listen, "admin_listen": admin_listen}
    if cli.uses_embedded_default:
        overrides["demo"] = {"enabled": True}
    if worker_of is not None:
        return run_worker(cli, overrides, worker_of, log_level)
    settings = cli.settings(**overrides)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ensure_ca(settings.ca_dir)
    KeyRing.load(settings.keys_dir)
    if settings.demo.enabled:
        ensure_demo_agent(settings)

    from wardgate.proxy.server import run  # the data plane is only needed here

    def on_ready(listeners: object) -> None:
        click.echo(banner(settings, listeners), err=False)

    run(settings, on_ready, workers=workers)


def run_optimised() -> None:
    """Re-run this command under ``python -O`` (PYTHONOPTIMIZE=1, inherited by workers).

    Without -O, mitmproxy type-checks every field of every Request and Response it builds and
    asserts its layers' invariants on every event: about 9% of the proxy's CPU per call (bench/,
    docs/benchmarks.md). wardgate's own checks never use ``assert``. Only when started as the
    ``wardgate`` command (not inside a test runner calling the click command)."""
    if sys.flags.optimize or os.path.basename(sys.argv[0]) not in ("wardgate", "__main__.py"):
        return
    os.environ["PYTHONOPTIMIZE"] = "1"
    os.execv(sys.executable, [sys.executable, "-m", "wardgate.gateway.cli", *sys.argv[1:]])


def run_worker(cli: CliContext, overrides: dict[str, object], worker_of: str, log_level: str) -> None:
    """A proxy-only worker: the first process's listen address and OPA, the same home and config."""
    from wardgate.proxy.server import run
    from wardgate.proxy.workers import WorkerOf, die_with_parent

    of = WorkerOf.from_json(worker_of)
    die_with_parent(of.parent)
    host, _, port = of.proxy.rpartition(":")  # the host may be "" (every interface), which --proxy-listen refuses
    overrides.update(proxy_listen=None, proxy={"listen": {"host": host.strip("[]"), "port": int(port)}},
                     opa={"mode": "external", "url": of.opa})
    settings = cli.settings(**overrides)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def on_ready(listeners: object) -> None:
        click.echo("ready")  # read by the first process (proxy/workers.py)

    run(settings, on_ready, worker_of=of)
