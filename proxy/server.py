"""``wardgate up``: the proxy (a lean mitmproxy Master), the admin API and OPA on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from mitmproxy import master, options
from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, tlsconfig
from wardgate.gateway import admin, admin_token, approval_api, oauth_connect
from wardgate.gateway.agents import AgentDirectory, AgentRegistry
from wardgate.gateway.approvals import ApprovalStore
from wardgate.gateway.audit_process import AuditLink, AuditProcess
from wardgate.gateway.audit_setup import writer_config
from wardgate.gateway.destinations import DestinationGuard
from wardgate.gateway.echo import build_echo_app
from wardgate.gateway.errors import ConfigError, DependencyUnavailable
from wardgate.gateway.idempotency import IdempotencyStore
from wardgate.gateway.identity import TokenVerifier
from wardgate.gateway.issuers import ExternalIssuer
from wardgate.gateway.keys import KeyRing
from wardgate.gateway.opa_address import unix_socket
from wardgate.gateway.opa_process import ManagedOpa, find_opa, nondeterministic_builtins, wait_healthy
from wardgate.gateway.policy import PolicyClient
from wardgate.gateway.policy_reload import PolicyReloader
from wardgate.gateway.revocations import RevocationView, open_store
from wardgate.gateway.revoker import Revoker
from wardgate.gateway.settings import Settings
from yarl import URL

from . import inline_hooks, large_responses, protocol_errors, shortcuts, stages, upstream_timeout, websocket_frames, websocket_limits
from .agent_counts import SharedCounts
from .approval import ApprovalGate
from .audit_trail import AuditTrail
from .auth import ProxyAuth
from .credentials import build_credentials, upstream_ssl_context
from .destinations import DestinationCheck, DestinationPin
from .dispatch import HookTable
from .egress import EgressPolicy
from .event_streams import EventStreams
from .exchange import GatewayExchange
from .framing import HeadGuard
from .idempotency import Idempotency
from .intent import IntentRecord
from .large_responses import LargeResponses
from .limits import Limits
from .mcp import McpGateway
from .policy_follow import PolicyFollower
from .polling_selector import PollingSelector
from .trace import TraceContext
from .upstream_timeout import ConnectTimeout, UpstreamTimeout
from .workers import WorkerOf, listen_with_reuse_port, run_workers

log = logging.getLogger("wardgate")


def build_master(settings: Settings, addons: list[object]) -> master.Master:
    """Only the addons wardgate needs: mitmdump's default set costs about half the per-request time."""
    opts = options.Options(
        listen_host=settings.proxy.listen.host,
        listen_port=settings.proxy.listen.port,
        confdir=str(settings.ca_dir),
        mode=["regular"],
    )
    proxy_master = master.Master(opts)
    # Same addons, same order and semantics; each hook's handlers are looked up once (proxy/dispatch.py).
    opts.changed.disconnect(proxy_master.addons._configure_all)
    proxy_master.addons = HookTable(proxy_master)
    proxy_master.addons.add(
        # ErrorCheck stops start-up (exit 1, errors on stderr) when e.g. the listen port is taken.
        errorcheck.ErrorCheck(repeat_errors_on_stderr=True),
        core.Core(),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
    )
    proxy_master.addons.add(*addons)
    opts.update(
        # Upstream connections open only once a request inside the tunnel has been allowed.
        connection_strategy="lazy",
        http2=False,
        ssl_insecure=False,
        ssl_verify_upstream_trusted_ca=str(settings.proxy.upstream_ca_file) if settings.proxy.upstream_ca_file else None,
    )
    return proxy_master


@dataclass
class Listeners:
    proxy: str
    admin: str
    opa: str
    opa_pid: int | None
    echo: str | None
    pid: int
    workers: list[int] = field(default_factory=list)  # pids of the proxy-only workers (--workers)


async def _start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    server = site._server  # aiohttp exposes the bound port only through the server's sockets
    assert server is not None and server.sockets
    bound = server.sockets[0].getsockname()
    return runner, f"{bound[0]}:{bound[1]}"


def report_loop_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler: everything as asyncio reports it, but a cancellation.

    At a stop, asyncio cancels the task of every client connection still open, and Python 3.11's
    ``StreamReaderProtocol`` then asks each cancelled task for its exception, which raises
    CancelledError into this handler: one ERROR traceback per open keep-alive connection for a
    clean stop. A cancellation is not an error; it is logged at debug level."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        log.debug("cancelled at stop: %s", context.get("message"))
        return
    loop.default_exception_handler(context)


def run(settings: Settings, on_ready: Callable[[Listeners], None], workers: int = 1,
        worker_of: WorkerOf | None = None) -> None:
    """``serve`` on an event loop of its own whose selector polls, instead of sleeping, while a call
    waits for its intent record (proxy/polling_selector.py, ``[audit] commit_poll``)."""
    selector = PollingSelector(settings.audit.commit_poll)
    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selector)) as runner:
        runner.run(serve(settings, on_ready, workers=workers, worker_of=worker_of, selector=selector))


async def serve(
    settings: Settings, on_ready: Callable[[Listeners], None], workers: int = 1, worker_of: WorkerOf | None = None,
    selector: PollingSelector | None = None,
) -> None:
    """The gateway; with ``workers`` > 1 it also starts that many minus one proxy-only workers
    (proxy/workers.py). A worker (``worker_of`` set) runs the proxy only: no admin API, no echo."""
    asyncio.get_running_loop().set_exception_handler(report_loop_errors)
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings.run_dir.mkdir(exist_ok=True, mode=0o700)
    settings.run_dir.chmod(0o700)  # the audit writer's and the managed OPA's sockets live here
    keys = KeyRing.load(settings.keys_dir)
    registry = AgentRegistry(settings.state_db)
    directory = AgentDirectory(registry)
    await directory.refresh()
    audit: AuditProcess | AuditLink
    if worker_of is not None:  # the gateway's writer takes every worker's records: one chain, one process
        audit = AuditLink(writer_config(settings), worker_of.audit)
    else:
        audit = AuditProcess(writer_config(settings), listen_in=settings.run_dir if workers > 1 else None)
    await audit.start()
    if selector is not None:
        selector.poll_while(audit)
    token = settings.admin_token.get_secret_value() if settings.admin_token else admin_token.load_or_create(settings.home / "admin.token")

    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(audit.stop)
        stack.callback(registry.close)
        state_url = settings.state.url.get_secret_value() if settings.state.url else None
        revocation_store = open_store(state_url, settings.state_db, settings.revocation.timeout)
        await revocation_store.open()
        stack.push_async_callback(revocation_store.close)
        revocations = RevocationView(
            revocation_store,
            poll_interval=settings.revocation.poll_interval,
            max_staleness=settings.revocation.max_staleness,
        )
        await revocations.refresh()
        revoker = Revoker(revocation_store, audit, settings.audit.commit_timeout, revocations)
        managed: ManagedOpa | None = None
        if settings.opa.mode == "managed":
            managed = ManagedOpa(settings.opa, settings.home / "logs" / "opa.log", settings.run_dir, workers)
            stack.push_async_callback(managed.stop)  # also when start fails: its process, socket and folder go
            await managed.start()
            opa_url = managed.url
        else:
            if not settings.opa.url:
                raise ConfigError('opa.url is required when opa.mode = "external"', code="config_invalid")
            opa_url = settings.opa.url.rstrip("/")
        policy = await stack.enter_async_context(
            PolicyClient(opa_url, settings.opa.decision_path, settings.opa.timeout, cache_size=settings.opa.decision_cache)
        )
        if settings.opa.decision_cache > 0 and (managed is not None or (worker_of is not None and worker_of.opa_managed)):
            try:
                policy.allow_cache(await nondeterministic_builtins(find_opa(settings.opa.binary)))
            except (ConfigError, DependencyUnavailable, OSError) as error:
                log.warning("decision cache off: %s", error)
            await policy.read_policy()

        reloader: PolicyReloader | None = None
        if managed is not None:
            reloader = PolicyReloader(
                managed, policy, settings.opa.paths, settings.run_dir / "policy.json", grace=settings.opa.timeout + 2.0
            )
            if settings.opa.watch_interval > 0:
                watcher = asyncio.create_task(reloader.watch(settings.opa.watch_interval), name="policy-watch")
                stack.callback(watcher.cancel)

        async def ready() -> bool:
            if not audit.healthy:  # outcomes wait in the spool: drain before taking more calls
                return False
            try:
                await wait_healthy(managed.url if managed else opa_url, 0.5)
            except Exception:  # noqa: BLE001 - readiness reports, it never raises
                return False
            return True

        approvals = ApprovalStore(settings.home / "approvals.db")
        stack.callback(approvals.close)
        credentials = await stack.enter_async_context(
            build_credentials(settings, keys, audit, settings.audit.commit_timeout)
        )
        if worker_of is None:
            admin_app = admin.build_app(
                admin.AdminState(settings, keys, registry, audit, token, ready, revoker, revocations, directory, policy)
            )
            approval_api.install(admin_app, approvals)
            oauth_connect.add_routes(admin_app, credentials.connector)
            admin_runner, admin_addr = await _start_site(
                admin_app,
                settings.admin.listen.host,
                settings.admin.listen.port,
            )
            stack.push_async_callback(admin_runner.cleanup)
        else:
            admin_addr = worker_of.admin
        echo_addr = worker_of.echo if worker_of else None
        if settings.demo.enabled and worker_of is None:
            echo_runner, echo_addr = await _start_site(
                build_echo_app(), settings.demo.echo_listen.host, settings.demo.echo_listen.port
            )
            stack.push_async_callback(echo_runner.cleanup)

        issuers: list[ExternalIssuer] = []
        if settings.trusted_issuers:
            jwks_session = await stack.enter_async_context(aiohttp.ClientSession())
            issuers = [ExternalIssuer(trusted, jwks_session) for trusted in settings.trusted_issuers]
            for issuer in issuers:
                task = asyncio.create_task(issuer.run(), name=f"jwks {issuer.settings.issuer}")
                stack.callback(task.cancel)
        verifier = TokenVerifier(keys, settings.identity, directory, revocations, issuers)
        timeout = settings.audit.commit_timeout
        guard = DestinationGuard(settings.egress.unsafe_allow_ranges, resolve_timeout=settings.egress.resolve_timeout,
                                 resolve_cache=settings.egress.resolve_cache)
        follower = PolicyFollower(policy, settings.run_dir / "listeners.json")
        stack.callback(follower.close)
        # The managed OPA has no TCP port (a Unix socket, gateway/opa_address.py); an external one does.
        for address in [admin_addr] + ([] if unix_socket(opa_url) else [URL(opa_url).authority]):
            host, _, port = address.rpartition(":")
            guard.protect(host, int(port))
        # wardgate's own databases are not reachable through it either.
        for dsn in (settings.state.url, settings.audit.postgres_dsn):
            database = URL(dsn.get_secret_value()) if dsn else None
            if database is not None and database.host:
                await guard.protect_name(database.host, database.port or 5432)
        if echo_addr:
            host, _, port = echo_addr.rpartition(":")
            guard.allow_exactly(host, int(port))
        protocol_errors.install()
        inline_hooks.install()
        shortcuts.install()
        if workers > 1 or worker_of is not None:
            listen_with_reuse_port()
        idempotency_store = IdempotencyStore(settings.home / "idempotency.db")
        stack.callback(idempotency_store.close)
        auth = ProxyAuth(verifier, audit, timeout, revocations)
        pin = DestinationPin(guard, audit, timeout)
        idempotency = Idempotency(idempotency_store, settings.idempotency, audit, timeout)
        heads = HeadGuard(settings.limits.max_header_bytes, settings.limits.max_headers, settings.limits.max_body_bytes)
        heads.install()
        counts: SharedCounts | None = None
        rate, burst = settings.limits.requests_per_second, settings.limits.burst
        if workers > 1:  # every worker counts an agent's requests and tunnels in the same table
            counts = SharedCounts.create(settings.run_dir / "agent-counts", rate, burst, workers)
        elif worker_of is not None:
            counts = SharedCounts.open(Path(worker_of.counts), rate, burst, worker_of.workers, worker_of.index)
        if counts is not None:
            stack.callback(counts.close)
        limits = Limits(settings.limits, heads, audit, timeout, counts=counts)
        upstream_timeout.install()
        large_responses.install()  # relays an unknown-length body that grows past its threshold
        websocket_frames.install()  # a scrubbed text message is re-framed between characters
        websocket_limits.install(settings.limits.max_websocket_message_bytes)  # one message's size, either way
        upstream_deadline = UpstreamTimeout(settings.limits.upstream_timeout)
        connect_deadline = ConnectTimeout(settings.limits.connect_timeout)
        proxy_master = build_master(
            settings,
            stages.apply(settings.bench.unsafe_skip_stages, [
                TraceContext(),
                auth,
                limits,
                DestinationCheck(audit, timeout),
                # Marks MCP calls, whose decision waits for the body (`request` hook, next three addons).
                McpGateway(settings.mcp, policy, audit, timeout),
                credentials.binding,
                EgressPolicy(policy, audit, timeout),
                pin,
                IntentRecord(audit, timeout),
                # `response` hook: scrub the buffered body before Idempotency stores it for replay.
                credentials.scrubber,
                # `response` hook: refuses a credentialed upgrade it could not read, before AuditTrail;
                # `websocket_message`: scrubs server→client messages.
                credentials.websocket_scrubber,
                # `request` hook, after the body is read and the intent committed:
                ApprovalGate(approvals, settings.approvals.ttl, audit, timeout),
                idempotency,
                # `request` hook, last: the credential joins only a call about to leave (approved,
                # not a replay), and stays out of approval and idempotency fingerprints.
                credentials.injector,
                # `request` hook, after everything: a claimed call is sent by the gateway itself, so
                # its answer is stored even if the agent goes away mid-call.
                GatewayExchange(pin, idempotency, settings.idempotency, upstream_ssl_context(settings), audit),
                AuditTrail(audit),
                EventStreams(),
                credentials.stream_scrubber,
                # `responseheaders`, after the scrubber decided for calls carrying a credential.
                LargeResponses(settings.limits.response_buffer_bytes, settings.mcp.max_body_bytes),
                upstream_deadline,
                # `server_connect` hook, after DestinationPin chose the address to dial.
                connect_deadline,
            ]),
        )
        auth.attach(proxy_master.addons.get("proxyserver"))
        limits.attach(proxy_master.addons.get("proxyserver"))
        upstream_deadline.attach(proxy_master.addons.get("proxyserver"))
        connect_deadline.attach(proxy_master.addons.get("proxyserver"))
        refresher = asyncio.create_task(directory.run(), name="agent-directory")
        stack.callback(refresher.cancel)
        revocation_feed = asyncio.create_task(revocations.run(), name="revocation-view")
        stack.callback(revocation_feed.cancel)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, proxy_master.shutdown)
        reloads: set[asyncio.Task[bool]] = set()

        def reload_on_signal() -> None:
            # SIGHUP must never stop the gateway, whatever the OPA mode.
            if worker_of is not None and worker_of.opa_managed:
                follower.follow()  # sent by the first process: its OPA changed
                return
            if reloader is None:
                log.warning("SIGHUP: the external OPA reloads its own policies; nothing to do")
                return
            task = asyncio.create_task(reloader.reload("SIGHUP"))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, reload_on_signal)
        if managed is not None:
            def opa_changed() -> None:
                """Replaced by a reload, dead, or restarted: the caches follow, and listeners.json
                says where and which process it is now (the workers read it when told)."""
                assert managed is not None
                follower.opa_changed(functools.partial(point_listeners_at, settings.run_dir / "listeners.json",
                                                       managed.url, managed.pid))

            managed.on_change = opa_changed
            if reloader is not None:
                reloader.on_switch = lambda _url: opa_changed()

        async def announce() -> None:
            ps = proxy_master.addons.get("proxyserver")
            while not ps.is_running or not ps.listen_addrs():
                if proxy_master.should_exit.is_set():
                    return
                await asyncio.sleep(0.02)
            host, port = ps.listen_addrs()[0][:2]
            guard.protect(host, port)
            listeners = Listeners(f"{host}:{port}", admin_addr, opa_url, managed.pid if managed else None, echo_addr, os.getpid())
            if worker_of is None:
                if workers > 1:
                    assert isinstance(audit, AuditProcess) and audit.listen_path is not None
                    assert counts is not None
                    # The workers bind the configured host (every address it names) on the port this process got.
                    of = WorkerOf(f"{settings.proxy.listen.host}:{port}", opa_url, admin_addr, echo_addr, audit.listen_path,
                                  str(counts.path), workers, os.getpid(), opa_managed=managed is not None)
                    listeners.workers = await stack.enter_async_context(
                        run_workers(workers - 1, of, audit.stop_timeout, on_exit=counts.forget))
                    follower.workers = listeners.workers
                write_listeners(settings.run_dir / "listeners.json", listeners)
            on_ready(listeners)

        announcer = asyncio.create_task(announce())
        await proxy_master.run()
        announcer.cancel()
        if worker_of is None:
            with contextlib.suppress(FileNotFoundError):
                (settings.run_dir / "listeners.json").unlink()


def point_listeners_at(path: Path, opa: str, opa_pid: int | None) -> None:
    """Rewrite ``path`` (if written yet) with the OPA now serving. Blocking."""
    if path.exists():
        current = json.loads(path.read_text())
        current.update(opa=opa, opa_pid=opa_pid)
        write_listeners(path, Listeners(**current))


def write_listeners(path: Path, listeners: Listeners) -> None:
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(listeners.__dict__, indent=2) + "\n")
    os.replace(temp, path)
