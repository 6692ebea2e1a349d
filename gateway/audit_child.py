"""The audit writer process: an AuditWriter (audit_writer) in a process of its own.

The gateway's event loop and a writer thread would share one GIL: every time the writer takes it
back (after a commit, to chain the next batch, to hand results over) the loop stops, and under load
the loop sat idle 12-16% of the time for it (docs/benchmarks.md). Here the writer's Python work runs
beside the proxy, not in its way. audit_process is the gateway's side.

Wire format on the private socket pair, both ways: a 4-byte big-endian length, then a ``marshal``ed
tuple (both ends are the same interpreter; the socket is inherited, never a path on disk).

- gateway → writer: ``("config", dict)`` once, then ``("record", flag, values)`` per record
  (values in AuditRecord field order; flag LATER, COMMIT or SPOOL), and ``("stop",)`` at the end.
- writer → gateway: ``("ready", writer_id, counts)`` or ``("failed", reason)``, then
  ``("settled", ok_ids, failed_ids, counts)`` as records are committed, spooled or refused (or with
  no ids when only the counters changed), and ``("stopped", counts)`` last. ``counts`` is
  (committed, batches, spooled, lost).

The writer stops when told to: it drains what it has, signs the clean-stop checkpoint and exits.
When the gateway's end closes without a word (the gateway died) it drains too, but its last
checkpoint is an ordinary one, so ``wardgate audit verify`` still shows that the gateway did not
stop cleanly. It ignores SIGINT and SIGTERM: a signal sent to the whole process group cannot cut a
drain short; the gateway tells it when to stop.
"""

from __future__ import annotations

import collections
import logging
import marshal
import queue
import select
import signal
import socket
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .audit import AuditRecord
from .audit_checkpoint import CheckpointSink
from .audit_keys import load_or_create_signer
from .audit_spool import Spool
from .audit_store import Postgres, Source
from .audit_writer import ABANDONED, WAKE, AuditWriter, CheckpointPolicy
from .errors import WardgateError

LATER, COMMIT, SPOOL = 0, 1, 2
_LENGTH = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024

log = logging.getLogger("wardgate.audit")


class FrameError(Exception):
    """The other end sent something that is not a frame of this protocol."""


def frame(message: tuple[Any, ...]) -> bytes:
    """``message`` as one frame; ValueError if it holds something marshal cannot write."""
    payload = marshal.dumps(message)
    return _LENGTH.pack(len(payload)) + payload


class FrameReader:
    """Splits a byte stream into messages; keeps a partial frame until the rest arrives."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        buffer = self._buffer
        buffer += data
        messages = []
        start = 0
        while len(buffer) - start >= 4:
            (length,) = _LENGTH.unpack_from(buffer, start)
            if length > MAX_FRAME:
                raise FrameError(f"frame of {length} bytes")
            end = start + 4 + length
            if len(buffer) < end:
                break
            try:
                message = marshal.loads(memoryview(buffer)[start + 4:end])
            except (ValueError, EOFError, TypeError) as exc:
                raise FrameError(f"unreadable frame: {exc}") from None
            if not isinstance(message, tuple) or not message:
                raise FrameError("frame is not a message")
            messages.append(message)
            start = end
        del buffer[:start]
        return messages


def writer_from_config(config: dict[str, Any], on_settled: Callable[[list[str], list[str]], None]) -> AuditWriter:
    """The writer audit_setup.writer_config describes (without importing Settings: a fast start)."""
    sink = None
    if config["sink_file"] or config["sink_command"]:
        sink = CheckpointSink(Path(config["sink_file"]) if config["sink_file"] else None, config["sink_command"])
    policy = CheckpointPolicy(
        load_or_create_signer(Path(config["keys"])),
        every=config["checkpoint_every"],
        interval=config["checkpoint_interval"],
        idle=config["checkpoint_idle"],
        sink=sink,
    )
    source: Source = Postgres(config["postgres"]) if config["postgres"] else Path(config["sqlite"])
    return AuditWriter(source, checkpoints=policy, spool=Spool(Path(config["spool"])),
                       busy_timeout=config["busy_timeout"], on_settled=on_settled)


class SocketInbox:
    """The writer's inbox in the writer process: records straight from the gateway's socket.

    ``get``/``get_nowait`` behave like the writer's own queue (audit_writer.Inbox). Records the
    gateway does not wait for go to the writer's outcome list; "stop" becomes the stop sentinel, and
    the socket closing (the gateway died) becomes ABANDONED."""

    def __init__(self, sock: socket.socket, audit: AuditWriter, frames: FrameReader, early: list[tuple[Any, ...]]) -> None:
        self._sock = sock
        self._audit = audit
        self._frames = frames
        self._items: collections.deque[Any] = collections.deque()
        self._ended = False
        self._absorb(early)

    def get(self, timeout: float | None = None) -> Any:
        if not self._items:
            self._fill(timeout)
        if not self._items:
            raise queue.Empty
        return self._items.popleft()

    def get_nowait(self) -> Any:
        return self.get(0)

    def _fill(self, timeout: float | None) -> None:
        if self._ended:
            return
        readable, _, _ = select.select([self._sock], [], [], timeout)
        if not readable:
            return
        try:
            data = self._sock.recv(1 << 20)
            messages = self._frames.feed(data) if data else []
        except (OSError, FrameError) as exc:
            log.error("audit writer process: the gateway's socket failed (%s)", exc)
            data = b""
        if not data:  # the gateway is gone: keep what it sent
            self._ended = True
            self._items.append(ABANDONED)
            return
        self._absorb(messages)

    def _absorb(self, messages: list[tuple[Any, ...]]) -> None:
        outcomes = False
        for message in messages:
            if message[0] == "stop":
                self._ended = True
                self._items.append(None)
                return
            try:
                _, flag, values = message
                record = AuditRecord(*values)
            except (ValueError, TypeError):  # a bug, not a crash loop: the gateway still holds it
                log.error("audit writer process: a record message it cannot read was skipped")
                continue
            if flag == LATER:
                self._audit.queue_later(record)
                outcomes = True
            else:
                self._items.append((record, None, flag == SPOOL))
        if outcomes and not self._items:
            self._items.append(WAKE)  # the writer's next wait then counts from these outcomes


class _Reporter:
    """Tells the gateway which records settled, with the writer's counters (on the writer's thread)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.audit: AuditWriter | None = None

    def counts(self) -> tuple[int, int, int, int]:
        audit = self.audit
        return (audit.committed, audit.batches, audit.spooled, audit.lost) if audit else (0, 0, 0, 0)

    def send(self, message: tuple[Any, ...]) -> None:
        try:
            self._sock.sendall(frame(message))
        except OSError:
            pass  # the gateway is gone; the inbox sees the socket close and the writer drains

    def settled(self, ok: list[str], failed: list[str]) -> None:
        self.send(("settled", ok, failed, self.counts()))


def serve(sock: socket.socket) -> None:
    frames = FrameReader()
    early: list[tuple[Any, ...]] = []
    while not early:
        data = sock.recv(65536)
        if not data:
            return
        early = frames.feed(data)
    kind, config = early.pop(0)[:2]
    if kind != "config":
        raise FrameError("the first message is not the configuration")
    logging.basicConfig(level=config.get("log_level", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    reporter = _Reporter(sock)
    try:
        audit = writer_from_config(config, on_settled=reporter.settled)
        conn = audit.open()
    except (WardgateError, OSError) as exc:
        reporter.send(("failed", str(exc)))
        return
    reporter.audit = audit
    reporter.send(("ready", audit.writer_id, reporter.counts()))
    audit.serve(conn, SocketInbox(sock, audit, frames, early))
    audit.close_sink()
    reporter.send(("stopped", reporter.counts()))


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        sock = socket.socket(fileno=int(argv[1]))
    except (IndexError, ValueError, OSError):
        print("usage: python -m wardgate.gateway.audit_child FD (started by the gateway)", file=sys.stderr)
        return 2
    try:
        serve(sock)
    except FrameError as exc:
        log.error("audit writer process stopped: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
