"""The gateway's side of the audit writer process (audit_child): AuditWriter's interface, no thread.

``commit`` and ``record_later`` send the record over a private socket pair and return at once; the
writer process acknowledges each record once it is committed, spooled or refused. Until then the
record stays here, so nothing is lost if that process dies: it is restarted and given every record
it had not settled. While it is down, ``commit`` fails at once with ``audit_unavailable`` (callers
refuse the call: nothing goes out unrecorded) and readiness is false. At stop, whatever the
writer did not settle (it was down, or hung and had to be killed) goes to the spool, which the
next writer replays.

With ``wardgate up --workers N`` the gateway's writer also listens on a Unix socket in the private
run folder, and each proxy worker reaches it through an :class:`AuditLink` instead of starting a
writer of its own: the same interface, a connection instead of a child, reconnected if the writer
is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

from .audit import AuditRecord, record_values
from .audit_child import COMMIT, LATER, SOON, SPOOL, FrameError, FrameReader, frame
from .audit_spool import Spool
from .audit_writer import PendingCommit
from .errors import DependencyUnavailable
from .metrics import Metrics
from .socket_folder import socket_folder

log = logging.getLogger("wardgate.audit")


def _unavailable(message: str) -> DependencyUnavailable:
    return DependencyUnavailable(message, code="audit_unavailable")


class _Link(asyncio.Protocol):
    def __init__(self, owner: _WriterClient) -> None:
        self._owner = owner
        self._frames = FrameReader()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

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
        self._owner.disconnected(self)


class _WriterClient:
    """What AuditProcess and AuditLink share: AuditWriter's interface over a link to the writer,
    every record kept until the writer settles it and sent again to a writer that replaces it."""

    def __init__(self, config: dict[str, Any], metrics: Metrics | None, start_timeout: float,
                 stop_timeout: float | None, restart_delay: float) -> None:
        self.metrics = metrics or Metrics()
        self._config = config
        self._start_timeout = start_timeout
        # Draining waits at most a busy store's timeout per batch; a writer still busy well after
        # that is hung, and what it holds goes to the spool instead.
        self.stop_timeout = stop_timeout if stop_timeout is not None else 5.0 + 2 * config["busy_timeout"]
        self._restart_delay = restart_delay
        # Every record sent (or to send) until the writer settles it: id -> field values.
        self._unsettled: dict[str, tuple[Any, ...]] = {}
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self.awaiting = 0  # PendingCommits in flight: commits a caller waits for
        self._transport: asyncio.Transport | None = None  # once the writer said it is ready
        self._link: _Link | None = None  # the connection to the current writer, from its start
        self._greeting: asyncio.Future[tuple[Any, ...]] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._counts = (0, 0, 0, 0)  # committed, batches, spooled, lost: the current writer's
        self._earlier = [0, 0, 0]  # committed, batches, lost by writers before it
        self.writer_id = ""

    # -- AuditWriter's interface -----------------------------------------------------------------

    async def start(self) -> None:
        """Reach a writer; ``audit_unavailable`` if there is none that can open the store."""
        await self._connect()
        self._supervisor = asyncio.create_task(self._supervise(), name="audit-writer-supervisor")

    async def _stop_supervisor(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor

    async def stop(self) -> None:
        raise NotImplementedError

    async def _connect(self) -> None:
        raise NotImplementedError

    async def _ended(self) -> None:
        """Returns once the current writer is gone."""
        raise NotImplementedError

    def kill(self) -> None:
        """Drop a writer that sent nonsense (the supervisor then replaces it)."""
        raise NotImplementedError

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
        """Send ``record`` without waiting for its commit (outcomes); kept here until settled.

        Committed with the next batch while commits are in flight here, at once when none is
        (audit_child: SOON), so that at light load the next call's intent commits alone. At 1
        connection that took the intent's commit wait from 0.72-0.75 to 0.60-0.62 ms (means over
        15,000-18,000 calls) and the median latency to 0.95-0.97x (30 interleaved rounds); at 8
        batches barely change (0.86 per call against 0.84). Committing every outcome alone cost 6%
        of requests/s at 8 connections."""
        self.metrics.observe_record(record)
        message = self._message(record, LATER if self.awaiting else SOON)
        if message is not None and self._transport is not None:
            self._transport.write(message)

    async def commit(self, record: AuditRecord, timeout: float, *, spool_on_failure: bool = False) -> None:
        """Commit ``record`` durably or raise ``audit_unavailable``: the caller must not proceed."""
        await PendingCommit(self, record, timeout, spool_on_failure=spool_on_failure).wait()

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

    def disconnected(self, link: _Link | None = None) -> None:
        """The current writer's connection closed (a late report from an earlier one is ignored)."""
        if link is not None and link is not self._link:
            return
        self._link = None
        self._transport = None
        if self._greeting is not None and not self._greeting.done():
            self._greeting.set_result(("failed", "the writer process closed its socket"))
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(_unavailable("audit writer process stopped"))
        self._went_down()

    def _went_down(self) -> None:
        """Called once the connection to the writer is gone."""

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

    def _attached(self, transport: asyncio.BaseTransport, writer_id: str, counts: tuple[int, int, int, int]) -> None:
        """A writer said it is ready: use it, and first hand it what its predecessor had not settled."""
        self.writer_id, self._counts = writer_id, counts
        self._transport = transport  # type: ignore[assignment]
        for values in list(self._unsettled.values()):
            transport.write(frame(("record", LATER, values)))  # type: ignore[attr-defined]

    async def _greeted(self, transport: asyncio.BaseTransport) -> tuple[str, Any]:
        assert self._greeting is not None
        try:
            kind, detail, *counts = await asyncio.wait_for(self._greeting, self._start_timeout)
        except TimeoutError:
            kind, detail, counts = "failed", f"no answer within {self._start_timeout:.0f} s", []
        if kind == "ready" and len(counts) == 1:
            self._attached(transport, detail, counts[0])
        return kind, detail

    async def _supervise(self) -> None:
        """Replace the writer (or the link to it) whenever it ends before ``stop``."""
        while True:
            await self._ended()
            self._lost_writer()
            delay = self._restart_delay
            while True:
                try:
                    await self._connect()
                    break
                except DependencyUnavailable as exc:
                    log.error("%s; retrying in %.1f s", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)

    def _lost_writer(self) -> None:
        """Fold the ended writer's counters into the totals; its transport is gone."""
        link = self._link
        if link is not None:
            assert link.transport is not None
            link.transport.close()
            self.disconnected()
        self._fold(self._counts)
        self._counts = (0, 0, 0, 0)

    def _fold(self, counts: tuple[int, int, int, int]) -> None:
        """Add an ended writer's counters to those of the writers before it."""
        committed, batches, _, lost = counts
        self._earlier = [self._earlier[0] + committed, self._earlier[1] + batches, self._earlier[2] + lost]


class AuditProcess(_WriterClient):
    """Runs the audit writer in a child process and stands in for it (same interface as AuditWriter).

    ``listen_in`` (a private folder): the writer also takes records from proxy workers there
    (``listen_path`` is the socket; workers use :class:`AuditLink`)."""

    def __init__(self, config: dict[str, Any], *, metrics: Metrics | None = None, listen_in: Path | None = None,
                 start_timeout: float = 30.0, stop_timeout: float | None = None, restart_delay: float = 0.5) -> None:
        super().__init__(config, metrics, start_timeout, stop_timeout, restart_delay)
        self._listen_in = listen_in
        self._listener: socket.socket | None = None
        self._own_folder: Path | None = None
        self.listen_path: str | None = None
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        if self._listen_in is not None:
            self._listen()
        try:
            await super().start()
        except BaseException:
            self._unlisten()
            raise

    async def stop(self) -> None:
        """Let the writer drain and sign its clean-stop checkpoint, then wait for it to exit."""
        await self._stop_supervisor()
        process = self._process
        if process is None:
            self._unlisten()
            return
        if self._transport is not None:
            self._transport.write(frame(("stop",)))
        else:  # no link (a restart was under way): there is nothing it could drain
            self.kill()
        try:
            await asyncio.wait_for(process.wait(), self.stop_timeout)
        except TimeoutError:
            log.error("audit writer process did not stop within %.0f s: killed", self.stop_timeout)
            self.kill()
            await process.wait()
        self._unlisten()
        self._lost_writer()
        if self._unsettled:
            await self._spool_unsettled()

    def kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()

    def _listen(self) -> None:
        """The workers' way in: a Unix socket only this uid can reach, kept across writer restarts."""
        assert self._listen_in is not None
        folder, self._own_folder = socket_folder(self._listen_in, "audit.sock", "wardgate-audit-")
        path = folder / "audit.sock"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a gateway that did not stop cleanly
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(path))
            os.chmod(path, 0o600)
            listener.listen(128)
        except OSError as exc:
            listener.close()
            raise _unavailable(f"audit writer socket cannot be made: {exc.strerror}") from None
        self._listener, self.listen_path = listener, str(path)

    def _unlisten(self) -> None:
        if self._listener is None:
            return
        self._listener.close()
        self._listener = None
        assert self.listen_path is not None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.listen_path)
        if self._own_folder is not None:
            shutil.rmtree(self._own_folder, ignore_errors=True)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        fds = [theirs.fileno()] + ([self._listener.fileno()] if self._listener is not None else [])
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "wardgate.gateway.audit_child", *map(str, fds),
                pass_fds=fds, stdin=asyncio.subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            raise _unavailable(f"audit writer process cannot start: {exc.strerror}") from None
        finally:
            theirs.close()
        self._greeting = loop.create_future()
        transport, self._link = await loop.create_unix_connection(lambda: _Link(self), sock=ours)
        transport.write(frame(("config", {**self._config, "log_level": logging.getLogger().getEffectiveLevel()})))
        kind, detail = await self._greeted(transport)
        if kind != "ready":
            self._link = None  # its close is not news to anyone
            transport.close()
            self.kill()
            await self._process.wait()
            raise _unavailable(f"audit store cannot be opened: {detail}")

    async def _ended(self) -> None:
        assert self._process is not None
        code = await self._process.wait()
        log.error("audit writer process exited (%s); restarting it", code)


class AuditLink(_WriterClient):
    """A proxy worker's way to the gateway's audit writer (``AuditProcess.listen_path``).

    The same interface as AuditProcess. If the writer goes away (the gateway restarts it), calls are
    refused with ``audit_unavailable`` until the link is back; records not yet settled are then sent
    again. At stop it waits for its records to settle; any the writer could not take go to the spool."""

    def __init__(self, config: dict[str, Any], path: str, *, metrics: Metrics | None = None,
                 start_timeout: float = 10.0, stop_timeout: float | None = None, restart_delay: float = 0.2) -> None:
        super().__init__(config, metrics, start_timeout, stop_timeout, restart_delay)
        self._path = path
        self._down = asyncio.Event()

    async def stop(self) -> None:
        await self._stop_supervisor()
        deadline = time.monotonic() + self.stop_timeout
        while self._unsettled and self._transport is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self._lost_writer()
        if self._unsettled:
            await self._spool_unsettled()

    def kill(self) -> None:
        if self._link is not None and self._link.transport is not None:
            self._link.transport.close()

    def _went_down(self) -> None:
        self._down.set()

    def _fold(self, counts: tuple[int, int, int, int]) -> None:
        """Nothing: the shared writer's counters are every worker's, not this one's to add up (what
        this process lost itself stays counted)."""

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._greeting = loop.create_future()
        try:
            transport, self._link = await asyncio.wait_for(
                loop.create_unix_connection(lambda: _Link(self), self._path), self._start_timeout)
        except (OSError, TimeoutError) as exc:
            raise _unavailable(f"audit writer cannot be reached: {getattr(exc, 'strerror', None) or 'timed out'}") from None
        self._down.clear()
        kind, detail = await self._greeted(transport)
        if kind != "ready":
            self._link = None  # its close is not news to anyone
            transport.close()
            raise _unavailable(f"audit writer did not answer: {detail}")

    async def _ended(self) -> None:
        await self._down.wait()
        log.error("audit writer connection lost; reconnecting")
