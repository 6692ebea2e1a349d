"""The agents registry: which agents exist, for which tenant, with which scopes, and their status.

Stored in ``state.db``. The CLI writes it directly; a running gateway sees changes through
:class:`AgentDirectory`, a snapshot it reloads in a worker thread.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import BadRequest, NotFound
from .sqlite import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    name TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    owner TEXT NOT NULL DEFAULT '',
    scopes TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled', 'revoked')),
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
"""

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_SCOPE = re.compile(r"^[A-Za-z0-9:._/-]{1,64}$")
Status = Literal["active", "disabled", "revoked"]


def check_name(kind: str, value: str) -> str:
    if not _NAME.match(value):
        raise BadRequest(
            f"{kind} must be 1-63 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit",
            code=f"invalid_{kind}",
        )
    return value


def check_scopes(scopes: list[str]) -> tuple[str, ...]:
    for scope in scopes:
        if not _SCOPE.match(scope):
            raise BadRequest(f"invalid scope {scope!r}", code="invalid_scope")
    return tuple(sorted(set(scopes)))


@dataclass(frozen=True, slots=True)
class Agent:
    name: str
    tenant: str
    owner: str
    scopes: tuple[str, ...]
    status: Status
    created_at: float

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "tenant": self.tenant,
            "owner": self.owner,
            "scopes": list(self.scopes),
            "status": self.status,
            "created_at": self.created_at,
        }


def _row(row: sqlite3.Row) -> Agent:
    scopes = tuple(s for s in row["scopes"].split(" ") if s)
    return Agent(row["name"], row["tenant"], row["owner"], scopes, row["status"], row["created_at"])


class AgentRegistry:
    """Synchronous access to the registry (CLI, admin API through ``asyncio.to_thread``)."""

    def __init__(self, path: Path) -> None:
        self._conn = connect(path, schema=SCHEMA, check_same_thread=False)
        # One connection shared by worker threads: calls take turns.
        self._lock = threading.RLock()

    def close(self) -> None:
        self._conn.close()

    def create(self, name: str, tenant: str, scopes: list[str], owner: str = "") -> Agent:
        check_name("agent", name)
        check_name("tenant", tenant)
        normalized = check_scopes(scopes)
        now = time.time()
        try:
            with self._lock:
                self._conn.execute(
                    "INSERT INTO agents (name, tenant, owner, scopes, status, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, 'active', ?, ?)",
                    (name, tenant, owner, " ".join(normalized), now, now),
                )
        except sqlite3.IntegrityError:
            raise BadRequest(f"agent {name!r} already exists", code="agent_exists") from None
        return self.get(name)

    def get(self, name: str) -> Agent:
        with self._lock:
            row = self._conn.execute("SELECT * FROM agents WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no agent named {name!r}", code="agent_not_found")
        return _row(row)

    def list(self) -> list[Agent]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM agents ORDER BY tenant, name").fetchall()
        return [_row(r) for r in rows]

    def set_status(self, name: str, status: Status) -> Agent:
        with self._lock:
            cursor = self._conn.execute(
                "UPDATE agents SET status = ?, updated_at = ? WHERE name = ?", (status, time.time(), name)
            )
        if cursor.rowcount == 0:
            raise NotFound(f"no agent named {name!r}", code="agent_not_found")
        return self.get(name)


class AgentDirectory:
    """The gateway's in-memory view of the registry, so the hot path never touches the disk.

    Reloaded every ``interval`` seconds, and at once when a validly signed token names an agent
    the snapshot does not know yet, so an agent created a moment ago works immediately.
    """

    def __init__(self, registry: AgentRegistry, interval: float = 1.0) -> None:
        self._registry = registry
        self._interval = interval
        self._agents: dict[str, Agent] = {}
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    def get(self, name: str) -> Agent | None:
        return self._agents.get(name)

    async def refresh(self) -> None:
        async with self._lock:
            await self._reload()

    async def _reload(self) -> None:
        started = time.monotonic()
        agents = await asyncio.to_thread(self._registry.list)
        self._agents = {agent.name: agent for agent in agents}
        self._loaded_at = started

    async def lookup(self, name: str) -> Agent | None:
        """The agent, reloading once on a miss (only validly signed tokens get this far).

        Concurrent misses share one reload: a caller that waited for the lock while another
        reload ran uses that result instead of reading the database again.
        """
        agent = self._agents.get(name)
        if agent is None:
            missed_at = time.monotonic()
            async with self._lock:
                if self._loaded_at < missed_at:
                    await self._reload()
            agent = self._agents.get(name)
        return agent

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.refresh()
            except sqlite3.Error:
                # Keep serving the last snapshot; the next round retries.
                continue
