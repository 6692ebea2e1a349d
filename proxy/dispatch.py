"""HookTable: mitmproxy's AddonManager with the handlers of each hook looked up once, not per event.

mitmproxy dispatches every hook by walking the whole addon chain: for each addon it traverses
sub-addons, ``getattr``s the hook name, enters a ``contextlib`` ``safecall`` block and checks
whether the result is awaitable; then, for every flow hook, it does the same again for the
``update`` hook. With wardgate's 19 addons and about ten hooks per call, that walk was the largest
single cost on the proxy's event loop (py-spy: ``trigger_event`` ~35% of busy samples).

Here the handlers of a hook are collected once into a tuple (rebuilt whenever the chain changes),
so an event calls exactly the addons that handle it, in chain order. Behaviour is mitmproxy's:
``AddonHalt`` stops the chain, ``OptionsError`` propagates, any other exception is logged as an
addon error and the next addon runs.
"""

from __future__ import annotations

import inspect
import logging
import types
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from mitmproxy import exceptions, flow, hooks
from mitmproxy.addonmanager import AddonManager, traverse

log = logging.getLogger("mitmproxy.addonmanager")


class HookTable(AddonManager):
    def __init__(self, master: Any) -> None:
        super().__init__(master)
        self._handlers: dict[str, tuple[Callable[..., Any], ...]] = {}

    def add(self, *addons: Any) -> None:
        super().add(*addons)
        self._handlers.clear()

    def remove(self, addon: Any) -> None:
        super().remove(addon)
        self._handlers.clear()

    def clear(self) -> None:
        super().clear()
        self._handlers.clear()

    def handlers(self, name: str) -> tuple[Callable[..., Any], ...]:
        found = self._handlers.get(name)
        if found is None:
            collected = []
            for addon in traverse(self.chain):
                func = getattr(addon, name, None)
                if func is None or isinstance(func, types.ModuleType):
                    continue  # mitmproxy, too, skips a module imported under a hook's name
                if not callable(func):
                    raise exceptions.AddonManagerError(f"Addon handler {name} ({addon}) not callable")
                collected.append(func)
            found = self._handlers[name] = tuple(collected)
        return found

    async def trigger_event(self, event: hooks.Hook) -> None:
        handlers = self.handlers(event.name)
        if handlers:
            await _call_each(handlers, event.args())

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        await self.trigger_event(event)
        if self.handlers("update"):
            message = event.args()[0]
            if isinstance(message, flow.Flow):
                await self.trigger_event(hooks.UpdateHook([message]))

    def run_inline(self, event: hooks.Hook) -> Coroutine[Any, Any, None] | None:
        """``handle_lifecycle(event)`` run synchronously as far as it goes without waiting.

        Calls the handlers in chain order, here and now; None when all of them returned without
        handing back an awaitable. The first handler that returns one (an ``async def`` handler, or a
        sync one that needs to wait this time) ends the synchronous part: what remains (awaiting
        it, then the handlers after it) comes back as one coroutine for the caller to run in a
        task. Same order, same error handling as :meth:`handle_lifecycle`.
        """
        if self.handlers("update"):
            return self.handle_lifecycle(event)
        handlers = self.handlers(event.name)
        if not handlers:
            return None
        args = event.args()
        for position, func in enumerate(handlers):
            try:
                result = func(*args)
            except exceptions.AddonHalt:
                return None
            except exceptions.OptionsError:
                raise
            except Exception as error:  # noqa: BLE001 - mitmproxy's safecall: log, run the next addon
                log.error(f"Addon error: {error}", exc_info=True)
                continue
            if result is not None and inspect.isawaitable(result):
                return _call_each(handlers[position + 1:], args, first=result)
        return None


async def _call_each(handlers: tuple[Callable[..., Any], ...], args: list[Any], first: Awaitable[Any] | None = None) -> None:
    """mitmproxy's safecall over ``handlers`` (after awaiting ``first``, one handler's answer):
    AddonHalt stops the chain, OptionsError propagates, any other error is logged and the next runs."""
    for func in ((None, *handlers) if first is not None else handlers):
        try:
            result = first if func is None else func(*args)
            if result is not None and inspect.isawaitable(result):
                await result
        except exceptions.AddonHalt:
            return
        except exceptions.OptionsError:
            raise
        except Exception as error:  # noqa: BLE001 - mitmproxy's safecall: log, run the next addon
            log.error(f"Addon error: {error}", exc_info=True)
