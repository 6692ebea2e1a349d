"""Revocations: the four levers, where they are stored, and the gateway's in-memory view of them.

Levers (``Revocation.kind``):

- ``token``  one token, by ``jti``;
- ``run``    every token carrying that ``run`` claim (a kill switch for one runaway run);
- ``agent``  every token of that agent issued at or before the revocation time (ids not needed);
- ``key``    every token signed by that key id.

Revocations are append-only rows with a growing ``revision``. A :class:`RevocationStore` backend
(SQLite by default, PostgreSQL for several replicas; :func:`open_store` picks one from the URL)
holds them. Each gateway keeps a :class:`RevocationView`: the full set in memory, refreshed by
asking the store for rows after the last revision it has seen. It refreshes on a short poll (the
guarantee) and whenever the backend signals a change (PostgreSQL LISTEN/NOTIFY, the wake-up).
If the view has not refreshed successfully for longer than ``max_staleness`` it refuses every
call with 503 ``revocation_unavailable`` rather than serve on data that may be stale.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from .errors import BadRequest, ConfigError, DependencyUnavailable, IdentityError

log = logging.getLogger("wardgate.revocations")

RevocationKind = Literal["token", "run", "agent", "key"]
KINDS: tuple[RevocationKind, ...] = ("token", "run", "agent", "key")


@dataclass(frozen=True, slots=True)
class Revocation:
    revision: int
    kind: RevocationKind
    subject: str
    reason: str
    actor: str
    revoked_at: float

    def as_dict(self) -> dict[str, object]:
        return {
            "revision": self.revision,
            "kind": self.kind,
            "subject": self.subject,
            "reason": self.reason,
            "actor": self.actor,
            "revoked_at": self.revoked_at,
        }


def check_revocation(kind: str, subject: str, reason: str) -> None:
    if kind not in KINDS:
        raise BadRequest(f"kind must be one of {', '.join(KINDS)}", code="invalid_revocation_kind")
    if not subject or len(subject) > 256 or not subject.isprintable():
        raise BadRequest("the revoked subject must be 1-256 printable characters", code="invalid_revocation_subject")
    if len(reason) > 1000:
        raise BadRequest("reason must be at most 1000 characters", code="invalid_revocation_reason")


class RevocationStore(abc.ABC):
    """Where revocations live. Every method has a bounded duration (``timeout`` seconds)."""

    timeout: float = 2.0

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def add(self, kind: RevocationKind, subject: str, reason: str, actor: str, revoked_at: float) -> Revocation:
        """Append one revocation and wake every listening replica."""

    @abc.abstractmethod
    async def after(self, revision: int) -> list[Revocation]:
        """Rows with a revision greater than ``revision``, oldest first."""

    async def watch(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever another process adds a revocation; runs until cancelled.

        Backends without a notification channel rely on polling alone.
        """
        await asyncio.Event().wait()


def open_store(url: str | None, sqlite_path: Path, timeout: float = 2.0) -> RevocationStore:
    """``postgresql://...`` → PostgreSQL; empty → the SQLite ``state.db`` beside the gateway."""
    if url and url.startswith(("postgresql://", "postgres://")):
        from .revocations_postgres import PostgresRevocations

        return PostgresRevocations(url, timeout)
    if url and not url.startswith("sqlite:"):
        raise ConfigError("state.url must be postgresql://... or sqlite:PATH")
    from .revocations_sqlite import SqliteRevocations

    path = Path(url[len("sqlite:"):]) if url else sqlite_path
    return SqliteRevocations(path, timeout)


class RevocableIdentity(Protocol):
    agent: str
    token_id: str
    run: str | None
    key_id: str | None
    issued_at: float


class RevocationView:
    """The in-memory revocation set one gateway checks on every request."""

    def __init__(self, store: RevocationStore, *, poll_interval: float = 0.25, max_staleness: float = 5.0) -> None:
        self._store = store
        self._poll_interval = poll_interval
        self._max_staleness = max_staleness
        self.tokens: set[str] = set()
        self.runs: set[str] = set()
        self.keys: set[str] = set()
        self.agents: dict[str, float] = {}  # agent → latest revocation time
        self.revision = 0
        self._fresh_at: float | None = None  # monotonic time of the last successful refresh
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._subscribers: list[Callable[[list[Revocation]], None]] = []

    def subscribe(self, callback: Callable[[list[Revocation]], None]) -> None:
        """``callback(new_rows)`` runs on the event loop after each refresh that found rows."""
        self._subscribers.append(callback)

    @property
    def staleness(self) -> float:
        return float("inf") if self._fresh_at is None else time.monotonic() - self._fresh_at

    def wake(self) -> None:
        self._wake.set()

    def apply(self, rows: list[Revocation]) -> None:
        for row in rows:
            if row.kind == "token":
                self.tokens.add(row.subject)
            elif row.kind == "run":
                self.runs.add(row.subject)
            elif row.kind == "key":
                self.keys.add(row.subject)
            elif row.kind == "agent":
                self.agents[row.subject] = max(row.revoked_at, self.agents.get(row.subject, 0.0))
            self.revision = max(self.revision, row.revision)

    async def refresh(self) -> list[Revocation]:
        async with self._lock:
            rows = await asyncio.wait_for(self._store.after(self.revision), self._store.timeout)
            self.apply(rows)
            self._fresh_at = time.monotonic()
        if rows:
            for callback in self._subscribers:
                try:
                    callback(rows)
                except Exception:  # noqa: BLE001 - one subscriber must not stop the others
                    log.exception("revocation subscriber failed")
        return rows

    def check_fresh(self) -> None:
        if self.staleness > self._max_staleness:
            raise DependencyUnavailable(
                "the revocation list could not be refreshed recently; refusing rather than serving on stale data",
                code="revocation_unavailable",
            )

    def revoked_reason(self, identity: RevocableIdentity) -> str | None:
        """Which lever, if any, revokes ``identity`` (pure lookup, no freshness check)."""
        if identity.token_id in self.tokens:
            return "token_revoked"
        if identity.run is not None and identity.run in self.runs:
            return "run_revoked"
        if identity.key_id is not None and identity.key_id in self.keys:
            return "key_revoked"
        cutoff = self.agents.get(identity.agent)
        if cutoff is not None and identity.issued_at <= cutoff:
            return "agent_revoked"
        return None

    def check(self, identity: RevocableIdentity) -> None:
        """Raise 503 when stale, 407 ``identity_revoked`` when any lever covers ``identity``."""
        self.check_fresh()
        reason = self.revoked_reason(identity)
        if reason is not None:
            raise IdentityError("token has been revoked", code="identity_revoked", reasons=[reason])

    async def run(self) -> None:
        """Refresh on every wake-up and at least every ``poll_interval``; never raises."""
        watcher = asyncio.create_task(self._watch(), name="revocation-watch")
        try:
            while True:
                try:
                    await asyncio.wait_for(self._wake.wait(), self._poll_interval)
                except TimeoutError:
                    pass
                self._wake.clear()
                try:
                    await self.refresh()
                except (asyncio.CancelledError, KeyboardInterrupt):
                    raise
                except Exception as exc:  # noqa: BLE001 - staleness grows; check_fresh fails closed
                    log.warning("revocation refresh failed: %s", type(exc).__name__)
        finally:
            watcher.cancel()

    async def _watch(self) -> None:
        while True:
            try:
                await self._store.watch(self.wake)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - polling goes on; retry the channel shortly
                log.warning("revocation notifications lost: %s", type(exc).__name__)
            await asyncio.sleep(self._poll_interval)
