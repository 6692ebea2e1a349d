"""Signed checkpoints over a writer's audit chain, and the external sink they can be copied to.

A checkpoint says "writer W had committed records up to ``seq`` and the record there hashed to
``hash``", signed with the checkpoint key (see :mod:`audit_keys`). Kinds:

- ``open``        seq 0 when a writer starts: every genuine chain begins with one;
- ``periodic``    every N records or T seconds while records arrive;
- ``idle``        when the writer has had nothing to do for a moment, so a quiet tail is covered;
- ``clean_stop``  the writer shut down cleanly: no record of this chain may follow it;
- ``prune``       records up to ``seq`` were removed on purpose (``wardgate audit prune``).

Checkpoints live in the audit database (``audit_checkpoints``) and, when configured, are also
appended to a sink the database cannot rewrite: a file on another path (fsync'd) and/or a command
that receives one JSON line on stdin.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import queue
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from .audit_keys import CheckpointSigner
from .audit_spool import append_fsynced

log = logging.getLogger("wardgate.audit")

CHECKPOINT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    writer TEXT NOT NULL, seq INTEGER NOT NULL, hash TEXT NOT NULL, time REAL NOT NULL,
    kind TEXT NOT NULL, key_id TEXT NOT NULL, signature TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_checkpoints_writer ON audit_checkpoints (writer, seq);
"""

CheckpointKind = Literal["open", "periodic", "idle", "clean_stop", "prune"]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    writer: str
    seq: int
    hash: str
    time: float
    kind: str
    key_id: str
    signature: str = ""

    def payload(self) -> bytes:
        """The signed bytes: everything but the signature, canonical JSON."""
        body = {k: v for k, v in asdict(self).items() if k != "signature"}
        body["time"] = float(body["time"])
        return json.dumps({"v": 1, **body}, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def signed(cls, signer: CheckpointSigner, *, writer: str, seq: int, hash: str, time: float, kind: str) -> "Checkpoint":
        unsigned = cls(writer, seq, hash, float(time), kind, signer.key_id)
        return cls(writer, seq, hash, float(time), kind, signer.key_id, signer.sign(unsigned.payload()))

    @classmethod
    def from_mapping(cls, row: Any) -> "Checkpoint":
        return cls(str(row["writer"]), int(row["seq"]), str(row["hash"]), float(row["time"]), str(row["kind"]),
                   str(row["key_id"]), str(row["signature"]))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def identity(self) -> tuple[str, int, str, str]:
        return (self.writer, self.seq, self.hash, self.kind)


INSERT_CHECKPOINT = (
    "INSERT INTO audit_checkpoints (writer, seq, hash, time, kind, key_id, signature) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def checkpoint_row(cp: Checkpoint) -> tuple[Any, ...]:
    return (cp.writer, cp.seq, cp.hash, cp.time, cp.kind, cp.key_id, cp.signature)


class CheckpointSink:
    """Copies checkpoints out of the database: a file (appended, fsync'd) and/or a command.

    The file is written synchronously by the caller (the writer thread): it is small and local.
    The command runs on its own thread with a timeout, so a slow sink never stalls audit writes;
    a failing command is logged, and verification then simply has fewer external checkpoints.
    """

    def __init__(self, file: Path | None, command: list[str] | None, command_timeout: float = 10.0) -> None:
        self.file = file
        self._command = command
        self._timeout = command_timeout
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        if command:
            self._thread = threading.Thread(target=self._run_commands, name="audit-sink", daemon=True)
            self._thread.start()

    def emit(self, cp: Checkpoint) -> None:
        line = json.dumps(cp.as_dict(), sort_keys=True, separators=(",", ":")).encode() + b"\n"
        if self.file is not None:
            try:
                self.file.parent.mkdir(parents=True, exist_ok=True)
                append_fsynced(self.file, line)
            except OSError as exc:
                log.error("audit checkpoint sink file %s not written: %s", self.file, exc.strerror)
        if self._command:
            self._queue.put(line)

    def _run_commands(self) -> None:
        while (line := self._queue.get()) is not None:
            try:
                subprocess.run(self._command, input=line, timeout=self._timeout, check=True,  # noqa: S603
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            except (OSError, subprocess.SubprocessError) as exc:
                log.error("audit checkpoint sink command failed: %s", type(exc).__name__)

    def close(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None


def read_sink_file(path: Path) -> tuple[list[Checkpoint], int]:
    """Checkpoints in a sink file, and the number of lines that could not be parsed."""
    found, bad = [], 0
    if not path.exists():
        return found, bad
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            found.append(Checkpoint.from_mapping(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            bad += 1
    return found, bad
