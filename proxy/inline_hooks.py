"""Hooks that finish without waiting complete inside ``server_event``, not in a task of their own.

mitmproxy answers every ``StartHook`` command of its protocol layers by starting an asyncio task
that runs the addons and then feeds ``HookCompleted`` back through ``server_event`` (its lock, the
watchdog, the whole layer stack). A keep-alive HTTP call raises four such hooks (requestheaders,
request, responseheaders, response); in wardgate only ``request`` usually has to wait (for the
intent record's commit), yet each paid for a task, a loop turn and a lock. The ``requestheaders``
steps (identity, limits, destination, credential binding, policy, pin) hand back a coroutine only
when they must wait: a token or a name seen for the first time, a decision OPA has to give, a
refusal's record (tests/proxy/test_judged_without_waiting.py).

Here ``server_event`` runs a hook's handlers on the spot through :meth:`HookTable.run_inline`.
When none of them hands back an awaitable, ``HookCompleted`` is queued and fed to the layers right
after the current event's commands, inside the same lock: the order the layers see is the order
they would have seen with the task (they are paused on the hook until it completes). When a handler
does need to wait, the rest of the hook — awaiting that handler and running the ones after it —
goes to a task exactly as before, so ``asyncio.current_task()``, timeouts and cancellation behave
as they do for any hook. Everything else is mitmproxy 11's ``server_event`` unchanged.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Coroutine
from typing import Any

from mitmproxy import flow
from mitmproxy.proxy import commands, events, server
from mitmproxy.utils import asyncio_utils

from .dispatch import HookTable

_original_server_event = server.ConnectionHandler.server_event


async def server_event(self: server.ConnectionHandler, event: events.Event) -> None:
    table = getattr(getattr(self, "master", None), "addons", None)
    if not isinstance(table, HookTable):
        await _original_server_event(self, event)
        return
    async with self._server_event_lock:
        # No `await` beyond this point (mitmproxy's rule for server_event).
        self.timeout_watchdog.register_activity()
        queue: deque[events.Event] = deque((event,))
        try:
            while queue:
                for command in self.layer.handle_event(queue.popleft()):
                    if isinstance(command, commands.StartHook):
                        rest = table.run_inline(command)
                        data = getattr(command, "flow", None) if rest is None else None  # a flow hook's argument
                        if isinstance(data, flow.Flow) and data.intercepted:
                            rest = data.wait_for_resume()
                        if rest is None:
                            if command.blocking:
                                queue.append(events.HookCompleted(command))
                            continue
                        task = asyncio_utils.create_task(
                            _finish_hook(self, command, rest), name=f"handle_hook({command.name})",
                            client=self.client.peername,
                        )
                        self.hook_tasks.add(task)
                        task.add_done_callback(self.hook_tasks.remove)
                    else:
                        _execute(self, command)
        except Exception:
            self.log("mitmproxy has crashed!", logging.ERROR, exc_info=True)


async def _finish_hook(handler: server.ConnectionHandler, hook: commands.StartHook, rest: Coroutine[Any, Any, Any]) -> None:
    with handler.timeout_watchdog.disarm():
        await rest
        (data,) = hook.args()
        if isinstance(data, flow.Flow):
            await data.wait_for_resume()
    if hook.blocking:
        await handler.server_event(events.HookCompleted(hook))


def _execute(self: server.ConnectionHandler, command: commands.Command) -> None:
    """mitmproxy 11.0's handling of every command but StartHook, as in ConnectionHandler.server_event."""
    if isinstance(command, commands.OpenConnection):
        assert command.connection not in self.transports
        handler = asyncio_utils.create_task(
            self.open_connection(command),
            name=f"server connection handler {command.connection.address}",
            client=self.client.peername,
        )
        self.transports[command.connection] = server.ConnectionIO(handler=handler)
    elif isinstance(command, commands.RequestWakeup):
        task = asyncio_utils.create_task(
            self.wakeup(command), name=f"wakeup timer ({command.delay:.1f}s)", client=self.client.peername
        )
        assert task is not None
        self.wakeup_timer.add(task)
    elif isinstance(command, commands.ConnectionCommand) and command.connection not in self.transports:
        pass  # The connection has already been closed.
    elif isinstance(command, commands.SendData):
        writer = self.transports[command.connection].writer
        assert writer
        if not writer.is_closing():
            writer.write(command.data)
    elif isinstance(command, commands.CloseTcpConnection):
        self.close_connection(command.connection, command.half_close)
    elif isinstance(command, commands.CloseConnection):
        self.close_connection(command.connection, False)
    elif isinstance(command, commands.Log):
        self.log(command.message, command.level)
    else:
        raise RuntimeError(f"Unexpected command: {command}")


def install() -> None:
    """Idempotent; checked against mitmproxy 11.0's ConnectionHandler (tests/proxy/test_inline_hooks.py)."""
    if server.ConnectionHandler.server_event is not server_event:
        server.ConnectionHandler.server_event = server_event  # type: ignore[method-assign]
