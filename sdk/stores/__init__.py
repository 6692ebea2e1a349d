"""Checkpoint stores: one base class, one small module per backend, and ``create(url)``.

    create("sqlite:///path/runs.db")          (the default; WAL, busy timeout, several processes)
    create("postgresql://user@host/db")       (runs that move between machines)

A store is synchronous and safe to share between threads. Every write that records a step is
*fenced*: it succeeds only while the writer still owns the run's lease and the run is not
cancelled, in the same statement, so a process that lost its lease cannot add to the history.
"""

from __future__ import annotations

import os
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

STATUSES = ("running", "completed", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: str
    status: str
    owner: str | None
    lease_until: float | None
    created: float
    updated: float
    output: str | None = None
    error: str | None = None
    steps: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "status": self.status, "owner": self.owner, "lease_until": self.lease_until,
            "created": self.created, "updated": self.updated, "output": self.output, "error": self.error,
            "steps": self.steps,
        }


@dataclass(frozen=True, slots=True)
class StepRecord:
    position: int
    name: str
    status: str  # "ok" or "error"
    output: str | None
    error: str | None
    finished: float
    attempts: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "position": self.position, "name": self.name, "status": self.status, "output": self.output,
            "error": self.error, "finished": self.finished, "attempts": self.attempts,
        }


@dataclass(frozen=True, slots=True)
class Claim:
    """Outcome of trying to take a run's lease: ``won`` or the current holder."""

    won: bool
    holder: str | None = None
    lease_until: float | None = None
    status: str | None = None


def new_owner() -> str:
    """``host:pid:nonce``: lets a process on the same host see that a holder died (kill -9)."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


def owner_is_dead(owner: str | None) -> bool:
    """True only when ``owner`` ran on this host and its process no longer exists."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class CheckpointStore(ABC):
    @abstractmethod
    def claim(self, run_id: str, owner: str, lease: float, now: float, *, take_from: str | None = None) -> Claim:
        """Create the run if new, else take its lease if free, expired, ours, or held by ``take_from``."""

    @abstractmethod
    def steps(self, run_id: str) -> list[StepRecord]:
        """The recorded steps, by position."""

    @abstractmethod
    def checkpoint(self, run_id: str, owner: str, step: StepRecord) -> bool:
        """Record ``step`` if ``owner`` still holds a running run; False when fenced off."""

    @abstractmethod
    def renew(self, run_id: str, owner: str, lease_until: float) -> bool: ...

    @abstractmethod
    def finish(self, run_id: str, owner: str, status: str, output: str | None, error: str | None, now: float) -> bool:
        """Set the final status and release the lease (status ``running`` only releases)."""

    @abstractmethod
    def get(self, run_id: str) -> RunRecord | None: ...

    @abstractmethod
    def list(self, *, status: str | None = None, limit: int = 100) -> list[RunRecord]: ...

    @abstractmethod
    def cancel(self, run_id: str, now: float) -> bool:
        """Mark a run cancelled; its next checkpoint is refused. False if unknown or already final."""

    @abstractmethod
    def close(self) -> None: ...


def create(url: str) -> CheckpointStore:
    """A store for ``url``: ``sqlite:///relative.db``, ``sqlite:////abs/path.db``, ``postgresql://...``."""
    if url.startswith("sqlite://"):
        from .sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite://").removeprefix("/") or "runs.db")
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"unsupported checkpoint store URL scheme in {url.split(':', 1)[0]!r} (use sqlite:// or postgresql://)")
