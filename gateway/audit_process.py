"""The gateway's side of the audit writer process (audit_child): AuditWriter's interface, no thread.

``commit`` and ``record_later`` send the record over a private socket pair and return at once; the
writer process acknowledges each record once it is committed, spooled or refused. Until then the
record stays here, so nothing is lost if that process dies: it is restarted and given every record
it had not settled. While it is down, ``commit`` fails at once with ``audit_unavailable`` (callers
refuse the call: nothing goes out unrecorded) and readiness is false. At stop, whatever the
writer did not settle (it was down, or hung and had to be killed) goes to the spool, which the
next writer replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import time
from pathlib import Path
from typing import Any

from .audit import AuditRecord, record_values
from .audit_child import COMMIT, LATER, SPOOL, FrameError, FrameReader, frame
from .audit_spool import Spool
from .audit_writer import expire_wait
from .errors import DependencyUnavailable
from .metrics import Metrics

log = logging.getLogger("wardgate.audit")


def _unavailable(message: str) -> DependencyUnavailable:
    return DependencyUnavailable(message, code="audit_unavailable")


class _Link(asyncio.Protocol):
    def __init__(self, owner: AuditProcess) -> None:
        self._owner = owner
        self._frames = FrameReader()

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._frames.feed(data)
        except FrameError as exc:
            log.error("audit writer process sent nonsense (%s): restarting it", exc)
            self._owner.kill()
            return
        for message in messages:
            self._owner.received(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner.disconnected()


class AuditProcess:
    """Runs the audit writer in a child process and stands in for it (same interface as AuditWriter)."""

    def __init__(self, config: dict[str, Any], *, metrics: Metrics | None = None,
                 start_timeout: float = 30.0, stop_timeout: float | None = None, restart_delay: float = 0.5) -> None:
        self.metrics = metrics or Metrics()
        self._config = config
        self._start_timeout = start_timeout
        # Draining waits at most a busy store's timeout per batch; a writer still busy well after
        # that is hung, and what it holds goes to the spool instead.
        self._stop_timeout = stop_timeout if stop_timeout is not None else 5.0 + 2 * config["busy_timeout"]
        self._restart_delay = restart_delay
        # Every record sent (or to send) until the writer settles it: id -> field values.
        self._unsettled: dict[str, tuple[Any, ...]] = {}
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._transport: asyncio.Transport | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._greeting: asyncio.Future[tuple[Any, ...]] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._counts = (0, 0, 0, 0)  # committed, batches, spooled, lost: the current writer's
        self._earlier = [0, 0, 0]  # committed, batches, lost by writers before it
        self.writer_id = ""

    # -- AuditWriter's interface -----------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer process; ``audit_unavailable`` if it cannot open the store."""
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="audit-writer-supervisor")

    async def stop(self) -> None:
        """Let the writer drain and sign its clean-stop checkpoint, then wait for it to exit."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        process = self._process
        if process is None:
            return
        if self._transport is not None:
            self._transport.write(frame(("stop",)))
        else:  # no link (a restart was under way): there is nothing it could drain
            self.kill()
        try:
            await asyncio.wait_for(process.wait(), self._stop_timeout)
        except TimeoutError:
            log.error("audit writer process did not stop within %.0f s: killed", self._stop_timeout)
            self.kill()
            await process.wait()
        self._lost_writer()
        if self._unsettled:
            await self._spool_unsettled()

    async def _spool_unsettled(self) -> None:
        """Records the writer never settled (it was down, or hung and was killed) go to the spool,
        which the next writer replays; one it did commit but could not report is skipped then."""
        records = [AuditRecord(*values) for values in self._unsettled.values()]
        try:
            await asyncio.to_thread(Spool(Path(self._config["spool"])).append, records)
        except OSError as exc:
            self._earlier[2] += len(records)
            log.error("%s audit records lost: the writer did not settle them and the spool is not writable (%s)",
                      len(records), exc.strerror)
            return
        self._unsettled.clear()
        log.warning("%s audit records the writer did not settle were put in the spool", len(records))

    @property
    def healthy(self) -> bool:
        """The writer runs and nothing waits in its spool."""
        return self._transport is not None and self._counts[2] == 0

    @property
    def pending(self) -> int:
        return len(self._unsettled)

    @property
    def committed(self) -> int:
        return self._earlier[0] + self._counts[0]

    @property
    def batches(self) -> int:
        return self._earlier[1] + self._counts[1]

    @property
    def spooled(self) -> int:
        return self._counts[2]

    @property
    def lost(self) -> int:
        return self._earlier[2] + self._counts[3]

    def submit(self, record: AuditRecord, *, spool_on_failure: bool = False) -> asyncio.Future[None]:
        """Send ``record``; the future resolves once it is committed (or fails)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.metrics.observe_record(record)
        message = self._message(record, SPOOL if spool_on_failure else COMMIT)
        if message is None:
            future.set_exception(_unavailable("audit record cannot be written"))
        elif self._transport is None:
            future.set_exception(_unavailable("audit writer process is not running"))
        else:
            self._waiting[record.id] = future
            self._transport.write(message)
        return future

    def record_later(self, record: AuditRecord) -> None:
        """Send ``record`` without waiting for its commit (outcomes); kept here until settled."""
        self.metrics.observe_record(record)
        message = self._message(record, LATER)
        if message is not None and self._transport is not None:
            self._transport.write(message)

    async def commit(self, record: AuditRecord, timeout: float, *, spool_on_failure: bool = False) -> None:
        """Commit ``record`` durably or raise ``audit_unavailable``: the caller must not proceed."""
        future = self.submit(record, spool_on_failure=spool_on_failure)
        started = time.perf_counter()
        expiry = asyncio.get_running_loop().call_later(timeout, expire_wait, future)
        try:
            await future
        finally:
            expiry.cancel()
        self.metrics.observe_commit(time.perf_counter() - started)

    def _message(self, record: AuditRecord, flag: int) -> bytes | None:
        """The record's frame, kept until settled; None (and counted lost) if it cannot be encoded."""
        values = record_values(record)
        try:
            message = frame(("record", flag, values))
        except ValueError:  # a field of a type marshal cannot write: a bug, but never a crash here
            log.error("audit record %s of call %s cannot be encoded: lost", record.id, record.call_id)
            self._earlier[2] += 1
            return None
        self._unsettled[record.id] = values
        return message

    # -- the link --------------------------------------------------------------------------------

    def received(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "settled":
            _, ok, failed, self._counts = message
            self._settle(ok, None)
            self._settle(failed, _unavailable("audit store write failed"))
        elif kind == "stopped":
            self._counts = message[1]
        elif self._greeting is not None and not self._greeting.done():
            self._greeting.set_result(message)

    def disconnected(self) -> None:
        self._transport = None
        if self._greeting is not None and not self._greeting.done():
            self._greeting.set_result(("failed", "the writer process closed its socket"))
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(_unavailable("audit writer process stopped"))

    def kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()

    def _settle(self, ids: list[str], error: Exception | None) -> None:
        for record_id in ids:
            self._unsettled.pop(record_id, None)
            future = self._waiting.pop(record_id, None)
            if future is None or future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    # -- the process -----------------------------------------------------------------------------

    async def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "wardgate.gateway.audit_child", str(theirs.fileno()),
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            raise _unavailable(f"audit writer process cannot start: {exc.strerror}") from None
        finally:
            theirs.close()
        self._greeting = loop.create_future()
        transport, _ = await loop.create_unix_connection(lambda: _Link(self), sock=ours)
        transport.write(frame(("config", {**self._config, "log_level": logging.getLogger().getEffectiveLevel()})))
        try:
            kind, detail, *counts = await asyncio.wait_for(self._greeting, self._start_timeout)
        except TimeoutError:
            kind, detail = "failed", f"no answer within {self._start_timeout:.0f} s"
        if kind != "ready" or len(counts) != 1:
            transport.close()
            self.kill()
            await self._process.wait()
            raise _unavailable(f"audit store cannot be opened: {detail}")
        self.writer_id, self._counts = detail, counts[0]
        self._transport = transport  # type: ignore[assignment]
        # A restarted writer first takes what its predecessor had not settled.
        for values in list(self._unsettled.values()):
            transport.write(frame(("record", LATER, values)))

    async def _supervise(self) -> None:
        """Restart the writer process whenever it exits before ``stop``."""
        while True:
            assert self._process is not None
            code = await self._process.wait()
            self._lost_writer()
            log.error("audit writer process exited (%s); restarting it", code)
            delay = self._restart_delay
            while True:
                try:
                    await self._spawn()
                    break
                except DependencyUnavailable as exc:
                    log.error("%s; retrying in %.1f s", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)

    def _lost_writer(self) -> None:
        """Fold the ended writer's counters into the totals; its transport is gone."""
        if self._transport is not None:
            self._transport.close()
            self.disconnected()
        committed, batches, _, lost = self._counts
        self._earlier = [self._earlier[0] + committed, self._earlier[1] + batches, self._earlier[2] + lost]
        self._counts = (0, 0, 0, 0)

