"""Hooks whose handlers finish without waiting run inside server_event; the rest still get a task.

HookTable.run_inline keeps mitmproxy's safecall semantics (order, AddonHalt, errors logged and the
next addon run); a real in-process proxy shows where each hook ran: a sync handler on the
connection's own task, an ``async def`` handler on a hook task of its own.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
from mitmproxy import exceptions, http, master, options
from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig
from mitmproxy.proxy.layers.http import HttpRequestHook

from wardgate.proxy import inline_hooks
from wardgate.proxy.dispatch import HookTable


class Recorder:
    def __init__(self, name: str, log: list[str], outcome: str = "ok") -> None:
        self.name, self.log, self.outcome = name, log, outcome

    def request(self, flow: Any) -> Any:
        self.log.append(self.name)
        if self.outcome == "halt":
            raise exceptions.AddonHalt
        if self.outcome == "error":
            raise RuntimeError("boom")
        if self.outcome == "wait":
            return self.later()
        return None

    async def later(self) -> None:
        await asyncio.sleep(0)
        self.log.append(f"{self.name} waited")


def table(*addons: Recorder) -> HookTable:
    manager = HookTable(master.Master(options.Options()))
    manager.add(*addons)
    return manager


@pytest.mark.parametrize(
    ("outcomes", "inline", "after"),
    [
        (["ok", "ok", "ok"], ["a", "b", "c"], []),
        (["ok", "halt", "ok"], ["a", "b"], []),
        (["error", "ok", "ok"], ["a", "b", "c"], []),
        (["ok", "wait", "ok"], ["a", "b"], ["b waited", "c"]),
        (["wait", "halt", "ok"], ["a"], ["a waited", "b"]),
    ],
    ids=["all-sync", "halt-stops", "error-logged-next-runs", "wait-hands-off-rest", "halt-after-wait"],
)
def test_run_inline_keeps_safecall_order(outcomes: list[str], inline: list[str], after: list[str],
                                         caplog: pytest.LogCaptureFixture) -> None:
    log: list[str] = []

    async def scenario() -> None:
        manager = table(*(Recorder(name, log, outcome) for name, outcome in zip("abc", outcomes)))
        rest = manager.run_inline(HttpRequestHook(object()))  # type: ignore[arg-type]
        assert log == inline
        assert (rest is None) == (not after)
        if rest is not None:
            await rest

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    assert log == inline + after
    assert ("Addon error: boom" in caplog.text) == ("error" in outcomes)


class WhereHooksRun:
    """Notes the task each hook of a call ran on; ``request`` waits, the others do not."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def _note(self, hook: str) -> None:
        task = asyncio.current_task()
        self.seen[hook] = task.get_name() if task else "none"

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._note("requestheaders")

    async def request(self, flow: http.HTTPFlow) -> None:
        await asyncio.sleep(0)
        self._note("request")
        flow.response = http.Response.make(200, b"answered at the proxy")  # no upstream is dialled

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._note("responseheaders")

    def response(self, flow: http.HTTPFlow) -> None:
        self._note("response")


def test_sync_hooks_run_on_the_connection_task(tmp_path: Path) -> None:
    where = WhereHooksRun()
    started = threading.Event()
    state: dict[str, Any] = {}

    def serve() -> None:
        async def main() -> None:
            opts = options.Options(listen_host="127.0.0.1", listen_port=0, confdir=str(tmp_path), mode=["regular"])
            proxy = master.Master(opts)
            opts.changed.disconnect(proxy.addons._configure_all)
            proxy.addons = HookTable(proxy)
            proxy.addons.add(core.Core(), proxyserver.Proxyserver(), next_layer.NextLayer(), tlsconfig.TlsConfig(), where)
            inline_hooks.install()
            state["master"], state["loop"] = proxy, asyncio.get_running_loop()
            runner = asyncio.create_task(proxy.run())
            server = proxy.addons.get("proxyserver")
            while not server.listen_addrs():
                await asyncio.sleep(0.01)
            state["port"] = server.listen_addrs()[0][1]
            started.set()
            await runner

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        got = requests.get("http://127.0.0.1:9/x", proxies={"http": f"http://127.0.0.1:{state['port']}"}, timeout=10)
        assert got.text == "answered at the proxy"
    finally:
        state["loop"].call_soon_threadsafe(state["master"].shutdown)
        thread.join(10)
    assert where.seen["request"].startswith("handle_hook(request)"), where.seen
    for hook in ("requestheaders", "response"):
        assert not where.seen[hook].startswith(f"handle_hook({hook})"), where.seen


def test_every_hook_that_carries_a_flow_names_it_flow() -> None:
    """server_event finds an inline hook's flow (to honour an intercept) as ``command.flow``."""
    import dataclasses

    from mitmproxy import flow, hooks
    from mitmproxy.proxy import server  # noqa: F401 - importing the server registers every layer's hooks

    carrying = {
        name: fields[0].name
        for name, cls in hooks.all_hooks.items()
        if (fields := dataclasses.fields(cls)) and isinstance(fields[0].type, type) and issubclass(fields[0].type, flow.Flow)
    }
    assert {"requestheaders", "request", "responseheaders", "response", "websocket_message", "tcp_message"} <= set(carrying)
    assert set(carrying.values()) == {"flow"}, carrying
