"""The audit writer process: an AuditWriter (audit_writer) in a process of its own.

The gateway's event loop and a writer thread would share one GIL: every time the writer takes it
back (after a commit, to chain the next batch, to hand results over) the loop stops, and under load
the loop sat idle 12-16% of the time for it (docs/benchmarks.md). Here the writer's Python work runs
beside the proxy, not in its way. audit_process is the gateway's side.

Wire format, both ways: a 4-byte big-endian length, then a ``marshal``ed tuple (every end is the
same interpreter). The gateway's socket pair is inherited, never a path on disk. With
``wardgate up --workers N`` the gateway also hands the writer a listening Unix socket in its private
run folder, and every proxy worker connects there, so all workers share one writer: one chain, one
group commit, one process (audit_process.AuditLink is a worker's side). A connection from another
uid is refused.

- gateway → writer: ``("config", dict)`` once, then ``("record", flag, values)`` per record
  (values in AuditRecord field order; flag LATER, SOON, COMMIT or SPOOL), and ``("stop",)`` at the end.
  LATER and SOON are records nobody waits for (outcomes): LATER ones are committed with the next
  batch (or after the linger), SOON ones at once. A gateway sends SOON when none of its commits is
  in flight: at light load no batch is coming for the outcome to share, and committed now it keeps
  out of the next call's commit (its intent then commits alone).
  A worker sends records only.
- writer → gateway: ``("ready", writer_id, counts)`` or ``("failed", reason)``, then
  ``("settled", ok_ids, failed_ids, counts)`` as records are committed, spooled or refused (or with
  no ids when only the counters changed), and ``("stopped", counts)`` last. ``counts`` is
  (committed, batches, spooled, lost). A worker gets ``ready`` when it connects and ``settled``
  for its own records.

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
import os
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
from .audit_writer import ABANDONED, FLUSH, WAKE, AuditWriter, CheckpointPolicy
from .errors import WardgateError

LATER, COMMIT, SPOOL, SOON = 0, 1, 2, 3
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


def writer_counts(audit: AuditWriter) -> tuple[int, int, int, int]:
    """The counters every report carries: committed, batches, spooled, lost."""
    return audit.committed, audit.batches, audit.spooled, audit.lost


class _Peer:
    """One connection to the writer: the gateway's own socket pair, or a proxy worker's.

    What the writer reports to a worker is sent without blocking and buffered if the worker is
    slow to read: a stalled worker must never stall the writer the other workers share."""

    def __init__(self, sock: socket.socket, frames: FrameReader, *, primary: bool) -> None:
        self.sock = sock
        self.frames = frames
        self.primary = primary
        self.open = True
        self._out = bytearray()

    @property
    def backlog(self) -> bool:
        return bool(self._out)

    def send(self, data: bytes) -> None:
        if not self.open:
            return
        if self.primary:  # the gateway reads as fast as the writer reports; blocking keeps order simple
            try:
                self.sock.sendall(data)
            except OSError:
                self.open = False  # the gateway is gone; its inbox sees the socket close and drains
            return
        self._out += data
        self.flush()

    def flush(self) -> None:
        try:
            while self._out:
                sent = self.sock.send(self._out)
                del self._out[:sent]
        except BlockingIOError:
            pass
        except OSError:
            self.open = False  # the inbox drops it
            self._out.clear()


class SocketInbox:
    """The writer's inbox in the writer process: records straight from the sockets of the gateway
    and of its proxy workers (``listener``, with ``wardgate up --workers N``).

    ``get``/``get_nowait`` behave like the writer's own queue (audit_writer.Inbox). Records nobody
    waits for go to the writer's outcome list. Only the gateway's socket can stop the writer: "stop"
    becomes the stop sentinel, and that socket closing (the gateway died) becomes ABANDONED. A worker
    that goes away just leaves; what it sent is still written. ``settled`` reports each record to
    the socket it came from."""

    def __init__(self, sock: socket.socket, audit: AuditWriter, frames: FrameReader, early: list[tuple[Any, ...]],
                 listener: socket.socket | None = None) -> None:
        self._primary = _Peer(sock, frames, primary=True)
        self._peers: dict[int, _Peer] = {sock.fileno(): self._primary}
        self._listener = listener
        self._audit = audit
        self._owners: dict[str, _Peer] = {}  # record id -> the peer it came from, until settled
        self._items: collections.deque[Any] = collections.deque()
        self._ended = False
        self._absorb(self._primary, early)

    # -- audit_writer.Inbox ----------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> Any:
        if not self._items:
            self._fill(timeout)
        if not self._items:
            raise queue.Empty
        return self._items.popleft()

    def get_nowait(self) -> Any:
        return self.get(0)

    # -- reports ---------------------------------------------------------------------------------

    def send_primary(self, message: tuple[Any, ...]) -> None:
        self._primary.send(frame(message))

    def settled(self, ok: list[str], failed: list[str], counts: tuple[int, int, int, int]) -> None:
        """Tell each peer which of its records settled (the gateway also hears when only the counters changed)."""
        by_peer: dict[_Peer, tuple[list[str], list[str]]] = {}
        owners = self._owners
        for ids, index in ((ok, 0), (failed, 1)):
            for record_id in ids:
                peer = owners.pop(record_id, None)
                if peer is not None and peer.open:
                    by_peer.setdefault(peer, ([], []))[index].append(record_id)
        if not by_peer:
            by_peer[self._primary] = ([], [])
        for peer, (peer_ok, peer_failed) in by_peer.items():
            peer.send(frame(("settled", peer_ok, peer_failed, counts)))

    # -- reading ---------------------------------------------------------------------------------

    def _fill(self, timeout: float | None) -> None:
        if self._ended:
            return
        readable = [peer.sock for peer in self._peers.values()]
        if self._listener is not None:
            readable.append(self._listener)
        writable = [peer.sock for peer in self._peers.values() if peer.backlog]
        ready, flushable, _ = select.select(readable, writable, [], timeout)
        for sock in flushable:
            self._peers[sock.fileno()].flush()
        for sock in ready:
            if sock is self._listener:
                self._accept()
            elif not self._ended:
                self._read(self._peers[sock.fileno()])
        for fileno, peer in list(self._peers.items()):
            if not peer.open and not peer.primary:  # a worker left; what it sent is still written
                del self._peers[fileno]
                peer.sock.close()

    def _read(self, peer: _Peer) -> None:
        try:
            data = peer.sock.recv(1 << 20)
            messages = peer.frames.feed(data) if data else []
        except BlockingIOError:
            return
        except (OSError, FrameError) as exc:
            log.error("audit writer process: a %s socket failed (%s)", "gateway" if peer.primary else "worker", exc)
            data, messages = b"", []
        if data:
            self._absorb(peer, messages)
        elif peer.primary:  # the gateway is gone: keep what it sent
            self._ended = True
            self._items.append(ABANDONED)
        else:
            peer.open = False

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        uid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]
        if uid != os.getuid():  # the socket's folder is private; this is the second lock
            log.error("audit writer process: refused a connection from uid %s", uid)
            sock.close()
            return
        sock.setblocking(False)
        peer = _Peer(sock, FrameReader(), primary=False)
        self._peers[sock.fileno()] = peer
        peer.send(frame(("ready", self._audit.writer_id, writer_counts(self._audit))))

    def _absorb(self, peer: _Peer, messages: list[tuple[Any, ...]]) -> None:
        outcomes = soon = False
        for message in messages:
            if message[0] == "stop" and peer.primary:
                self._ended = True
                self._items.append(None)
                return
            try:
                _, flag, values = message
                record = AuditRecord(*values)
            except (ValueError, TypeError):  # a bug, not a crash loop: the sender still holds it
                log.error("audit writer process: a record message it cannot read was skipped")
                continue
            self._owners[record.id] = peer
            if flag == LATER or flag == SOON:
                self._audit.queue_later(record)
                outcomes = True
                soon = soon or flag == SOON
            else:
                self._items.append((record, None, flag == SPOOL))
        if outcomes and not self._items:
            # The writer's next wait then counts from these outcomes; FLUSH commits them at once.
            self._items.append(FLUSH if soon else WAKE)


class _Reporter:
    """Hands settled ids to the inbox with the writer's counters (on the writer's thread)."""

    def __init__(self) -> None:
        self.audit: AuditWriter | None = None
        self.inbox: SocketInbox | None = None

    def counts(self) -> tuple[int, int, int, int]:
        return writer_counts(self.audit) if self.audit else (0, 0, 0, 0)

    def settled(self, ok: list[str], failed: list[str]) -> None:
        if self.inbox is not None:
            self.inbox.settled(ok, failed, self.counts())


def serve(sock: socket.socket, listener: socket.socket | None = None) -> None:
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
    reporter = _Reporter()
    try:
        audit = writer_from_config(config, on_settled=reporter.settled)
        conn = audit.open()
    except (WardgateError, OSError) as exc:
        _Peer(sock, frames, primary=True).send(frame(("failed", str(exc))))
        return
    reporter.audit = audit
    inbox = reporter.inbox = SocketInbox(sock, audit, frames, early, listener)
    inbox.send_primary(("ready", audit.writer_id, reporter.counts()))
    audit.serve(conn, inbox)
    audit.close_sink()
    inbox.send_primary(("stopped", reporter.counts()))


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        sock = socket.socket(fileno=int(argv[1]))
        listener = socket.socket(fileno=int(argv[2])) if len(argv) > 2 else None
        if listener is not None:
            listener.setblocking(False)  # select said a worker is waiting; if it left, accept must not block
    except (IndexError, ValueError, OSError):
        print("usage: python -m wardgate.gateway.audit_child FD [LISTENING_FD] (started by the gateway)", file=sys.stderr)
        return 2
    try:
        serve(sock, listener)
    except FrameError as exc:
        log.error("audit writer process stopped: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
