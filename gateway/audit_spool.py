"""A local, fsync'd spool for audit records the store could not take.

When an outcome cannot be committed after the upstream already answered, the response still goes
to the agent; the record goes here (one JSON line, fsync'd before the writer moves on) and is
replayed into the store by the writer thread. While the spool holds anything the replica reports
itself unready, so a load balancer drains it instead of sending more calls into a broken store.

The writer appends and replays; a gateway or proxy worker also appends, at stop, the records a
hung or dead writer never settled. So an append and a replay (read, commit, clear) each hold an
exclusive lock on the spool's lock file, and a record appended during a replay is never cleared
with the ones before it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .audit import AuditRecord


def append_fsynced(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` (0600 if new) and fsync it before returning; OSError if not."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __len__(self) -> int:
        if not self.path.exists():
            return 0
        with open(self.path, "rb") as handle:
            return sum(1 for line in handle if line.strip())

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Excludes every other process's append and replay of this spool while held."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def append(self, records: list["AuditRecord"]) -> None:
        """Durably append ``records``; raises OSError when even the spool cannot be written."""
        data = b"".join(json.dumps(asdict(r), sort_keys=True).encode() + b"\n" for r in records)
        with self.locked():
            append_fsynced(self.path, data)

    def read(self) -> list["AuditRecord"]:
        from .audit import AuditRecord

        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_bytes().splitlines():
            if not line.strip():
                continue
            try:
                records.append(AuditRecord(**json.loads(line)))
            except (ValueError, TypeError):
                continue  # a torn last line from a crash mid-append: its record was never acknowledged
        return records

    def clear(self) -> None:
        """Called only after the spooled records are committed to the store."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
