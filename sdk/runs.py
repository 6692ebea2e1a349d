"""Durable runs: steps whose results are checkpointed, so a restarted run skips finished work.

    store = create("sqlite:///runs.db")
    with Run(store, "order-42") as run:
        order = run.step(fetch_order, 42)          # runs once; on restart returns the recorded result
        receipt = run.step(charge, order, retry=Retry(attempts=3))
        run.sleep(3600)                            # durable: a restart sleeps only what is left

Contract:
- Steps are numbered in the order the code calls them. On restart, a step whose position is
  recorded returns its recorded result (or re-raises its recorded error) without running; the
  first unrecorded step runs. A different step name at a recorded position stops the run with
  :class:`NondeterministicRun` naming both, rather than mixing two histories.
- A result is checked to be JSON (pydantic models dumped in JSON mode) *before* it is recorded;
  on replay it is rebuilt from the step function's return annotation (or ``returns=``).
- A run is held by one process at a time through a lease in the store, renewed by a heartbeat
  thread. A second process gets :class:`RunLocked`; a holder on this host whose process has died
  (kill -9) is taken over at once, elsewhere once its lease expires. Every checkpoint is fenced by
  the lease, so a process that lost the run cannot add to its history.
- ``async with`` and ``await run.astep(...)`` are the asyncio flavour; store calls then run in a
  worker thread so the event loop never waits on the database.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import inspect
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import codec
from .errors import LeaseLost, NondeterministicRun, RunCancelled, RunError, RunLocked
from .stores import CheckpointStore, StepRecord, create, new_owner, owner_is_dead

T = TypeVar("T")
SLEEP_STEP = "wardgate.sleep"

__all__ = ["Retry", "Run", "StepContext", "create", "current_step"]


@dataclass(frozen=True, slots=True)
class Retry:
    """Retry a step up to ``attempts`` times on ``on`` errors, backing off exponentially with jitter.

    Only the final outcome is recorded; a step's idempotency keys do not change between attempts,
    so a retried side effect through the gateway still happens once.
    """

    attempts: int = 3
    initial: float = 0.2
    factor: float = 2.0
    maximum: float = 30.0
    on: tuple[type[BaseException], ...] = (Exception,)

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * self.factor ** (attempt - 1))
        return base / 2 + random.random() * base / 2


@dataclass(slots=True)
class StepContext:
    """The step being executed; the HTTP session stamps its requests from it."""

    run_id: str
    position: int
    name: str
    requests: int = field(default=0)

    @property
    def header(self) -> str:
        return f"{self.position}:{self.name}"

    def next_idempotency_key(self) -> str:
        """Derived from run, position, step name and the request's index within the step.

        Attempt-independent: a retry or a replay after a crash sends the same key again.
        """
        index = self.requests
        self.requests += 1
        material = f"{self.run_id}\x00{self.position}\x00{self.name}\x00{index}".encode()
        return "wg-" + hashlib.sha256(material).hexdigest()[:40]


current_step: contextvars.ContextVar[StepContext | None] = contextvars.ContextVar("wardgate_step", default=None)


def _name_of(function: Callable[..., Any]) -> str:
    return getattr(function, "__qualname__", None) or getattr(function, "__name__", None) or repr(function)


class Run:
    def __init__(self, store: CheckpointStore | str, run_id: str, *, lease: float = 30.0) -> None:
        if not run_id or len(run_id) > 200:
            raise ValueError("run id must be 1-200 characters")
        self.store = create(store) if isinstance(store, str) else store
        self.id = run_id
        self.lease = lease
        self.owner = new_owner()
        self._history: list[StepRecord] = []
        self._position = 0
        self._output: Any = None
        self._open = False
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._lost: RunError | None = None

    # ---- opening and closing -------------------------------------------------------------------

    def open(self) -> Run:
        claim = self.store.claim(self.id, self.owner, self.lease, time.time())
        if not claim.won and claim.status != "cancelled" and owner_is_dead(claim.holder):
            claim = self.store.claim(self.id, self.owner, self.lease, time.time(), take_from=claim.holder)
        if not claim.won:
            if claim.status == "cancelled":
                raise RunCancelled(f"run {self.id!r} was cancelled")
            left = max(0.0, (claim.lease_until or 0) - time.time())
            raise RunLocked(
                f"run {self.id!r} is held by another process ({claim.holder}); its lease ends in {left:.0f}s"
            )
        self._history = self.store.steps(self.id)
        self._position = 0
        self._open = True
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._renew, name=f"run-lease-{self.id}", daemon=True)
        self._heartbeat.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                if not self.store.renew(self.id, self.owner, time.time() + self.lease):
                    self._lost = self._why_fenced()
                    return
            except Exception:  # noqa: BLE001 - a missed renewal is retried; the fence protects history
                continue

    def close(self, status: str = "running", error: BaseException | None = None) -> None:
        if not self._open:
            return
        self._open = False
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(5)
        output = codec.encode(self._output) if status == "completed" else None
        self.store.finish(
            self.id, self.owner, status, output, codec.encode_error(error) if error else None, time.time()
        )

    def __enter__(self) -> Run:
        return self.open()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        self.close(*self._final(error))

    async def __aenter__(self) -> Run:
        await asyncio.to_thread(self.open)
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        await asyncio.to_thread(self.close, *self._final(error))

    @staticmethod
    def _final(error: BaseException | None) -> tuple[str, BaseException | None]:
        if error is None:
            return "completed", None
        if isinstance(error, (RunLocked, LeaseLost, RunCancelled, KeyboardInterrupt, SystemExit)):
            # Not the run's own failure: leave it resumable (or as the canceller left it).
            return "running", None
        return "failed", error

    def complete(self, output: Any) -> None:
        """The run's result, stored when the ``with`` block ends (checked to be JSON now)."""
        codec.to_json_value(output)
        self._output = output

    # ---- steps ---------------------------------------------------------------------------------

    def _next(self, name: str) -> tuple[int, StepRecord | None]:
        if not self._open:
            raise RunError(f"run {self.id!r} is not open (use `with Run(...)` or run.open())", code="run_not_open")
        if self._lost is not None:
            raise self._lost
        position = self._position
        self._position += 1
        recorded = self._history[position] if position < len(self._history) else None
        if recorded is not None and recorded.name != name:
            raise NondeterministicRun(
                f"run {self.id!r} step {position}: the history recorded {recorded.name!r} there,"
                f" but the code now calls {name!r}"
            )
        return position, recorded

    def _replay(self, recorded: StepRecord, returns: Any) -> Any:
        if recorded.status == "error":
            raise codec.decode_error(recorded.error or "{}")
        return codec.decode(recorded.output, returns)

    def _why_fenced(self) -> RunError:
        found = self.store.get(self.id)
        if found is not None and found.status == "cancelled":
            return RunCancelled(f"run {self.id!r} was cancelled")
        return LeaseLost(f"run {self.id!r} was taken over by another process ({found.owner if found else '?'})")

    def _record(self, position: int, name: str, result: Any, error: BaseException | None, attempts: int) -> None:
        step = StepRecord(
            position=position,
            name=name,
            status="error" if error is not None else "ok",
            output=None if error is not None else codec.encode(result),
            error=codec.encode_error(error) if error is not None else None,
            finished=time.time(),
            attempts=attempts,
        )
        if not self.store.checkpoint(self.id, self.owner, step):
            raise self._why_fenced()

    def step(
        self,
        function: Callable[..., T],
        *args: Any,
        name: str | None = None,
        retry: Retry | None = None,
        returns: Any = None,
        **kwargs: Any,
    ) -> T:
        """Run ``function(*args, **kwargs)`` once across restarts and return its (recorded) result."""
        step_name = name or _name_of(function)
        position, recorded = self._next(step_name)
        if recorded is not None:
            return self._replay(recorded, returns if returns is not None else codec.return_type(function))
        context = StepContext(self.id, position, step_name)
        token = current_step.set(context)
        try:
            attempt = 0
            while True:
                attempt += 1
                context.requests = 0
                try:
                    result = function(*args, **kwargs)
                except BaseException as error:
                    if retry is not None and attempt < retry.attempts and isinstance(error, retry.on):
                        time.sleep(retry.delay(attempt))
                        continue
                    if not isinstance(error, Exception) or isinstance(error, RunError):
                        raise
                    self._record(position, step_name, None, error, attempt)
                    raise
                self._record(position, step_name, result, None, attempt)
                return result
        finally:
            current_step.reset(token)

    async def astep(
        self,
        function: Callable[..., Awaitable[T]] | Callable[..., T],
        *args: Any,
        name: str | None = None,
        retry: Retry | None = None,
        returns: Any = None,
        **kwargs: Any,
    ) -> T:
        """The asyncio flavour of :meth:`step`; ``function`` may be a coroutine function or plain."""
        step_name = name or _name_of(function)
        position, recorded = self._next(step_name)
        if recorded is not None:
            return self._replay(recorded, returns if returns is not None else codec.return_type(function))
        context = StepContext(self.id, position, step_name)
        token = current_step.set(context)
        try:
            attempt = 0
            while True:
                attempt += 1
                context.requests = 0
                try:
                    result = function(*args, **kwargs)
                    if inspect.isawaitable(result):
                        result = await result
                except BaseException as error:
                    if retry is not None and attempt < retry.attempts and isinstance(error, retry.on):
                        await asyncio.sleep(retry.delay(attempt))
                        continue
                    if not isinstance(error, Exception) or isinstance(error, RunError):
                        raise
                    await asyncio.to_thread(self._record, position, step_name, None, error, attempt)
                    raise
                codec.to_json_value(result)  # fail here, in the step's context, not in the thread
                await asyncio.to_thread(self._record, position, step_name, result, None, attempt)
                return result  # type: ignore[return-value]
        finally:
            current_step.reset(token)

    # ---- durable sleep -------------------------------------------------------------------------

    def _wake_at(self, seconds: float) -> float:
        position, recorded = self._next(SLEEP_STEP)
        if recorded is not None:
            return float(codec.decode(recorded.output)["until"])
        until = time.time() + seconds
        # Recorded before sleeping: a restart sleeps only what is left of the original interval.
        self._record(position, SLEEP_STEP, {"until": until}, None, 1)
        return until

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, self._wake_at(seconds) - time.time()))

    async def asleep(self, seconds: float) -> None:
        until = await asyncio.to_thread(self._wake_at, seconds)
        await asyncio.sleep(max(0.0, until - time.time()))
