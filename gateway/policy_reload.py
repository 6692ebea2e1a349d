"""Policy reloads: on a file change under ``opa.paths`` or on request (SIGHUP, `wardgate policy reload`).

A reload starts a new managed OPA on the files as they are (:meth:`ManagedOpa.replace`). If the
policies compile it takes over; if not, the running OPA keeps serving the previous revision and
the rejection is logged and written to ``run/policy.json`` with OPA's message:

    {"revision": "<sha256 serving>", "state": "serving" | "rejected", "error": ..., "attempted": ...}

The revision is a digest of every policy and data file OPA loads, so the CLI can tell whether the
files on disk are the ones being served.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from .errors import WardgateError
from .opa_process import ManagedOpa
from .policy import PolicyClient

log = logging.getLogger("wardgate.policy")

LOADED_SUFFIXES = (".rego", ".json", ".yaml", ".yml")


def policy_files(paths: list[Path]) -> list[Path]:
    """The files OPA loads from ``paths`` (tests and hidden files excluded, as opa_command does)."""
    found: list[Path] = []
    for root in paths:
        candidates = [root] if root.is_file() else sorted(root.rglob("*"))
        for path in candidates:
            relative = path.relative_to(root) if path != root else Path(path.name)
            if any(part.startswith(".") for part in relative.parts):
                continue
            if path.is_file() and path.suffix in LOADED_SUFFIXES and not path.name.endswith("_test.rego"):
                found.append(path)
    return found


def policy_revision(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in policy_files(paths):
        try:
            content = path.read_bytes()
        except OSError:
            continue
        digest.update(str(path).encode() + b"\0" + hashlib.sha256(content).digest())
    return digest.hexdigest()


def _fingerprint(paths: list[Path]) -> tuple[tuple[str, int, int], ...]:
    entries = []
    for path in policy_files(paths):
        try:
            stat = path.stat()
        except OSError:
            continue
        entries.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(entries)


class PolicyReloader:
    def __init__(self, opa: ManagedOpa, policy: PolicyClient, paths: list[Path], status_file: Path, grace: float) -> None:
        self._opa = opa
        self._policy = policy
        self._paths = paths
        self._status_file = status_file
        self._grace = grace
        self._lock = asyncio.Lock()
        # Told the new OPA's address before any query goes to it (listeners.json and the workers follow it).
        self.on_switch: Callable[[str], None] | None = None
        self.revision = policy_revision(paths)
        policy.revision = self.revision
        self._write_status("serving", None, self.revision)

    async def reload(self, reason: str) -> bool:
        """Load the files as they are now; False (and the old policy keeps serving) if rejected."""
        async with self._lock:
            attempted = await asyncio.to_thread(policy_revision, self._paths)
            try:
                url = await self._opa.replace(self._grace)
            except WardgateError as error:
                log.error("policy reload (%s) rejected, still serving %s: %s", reason, self.revision[:12], error.message)
                self._write_status("rejected", error.message, attempted)
                return False
            if self.on_switch is not None:
                self.on_switch(url)
            await self._policy.retarget(url)
            self.revision = self._policy.revision = attempted
            log.warning("policy reloaded (%s): revision %s", reason, attempted[:12])
            self._write_status("serving", None, attempted)
            return True

    async def watch(self, interval: float) -> None:
        """Poll the files' mtimes and sizes; reload when they change (editors write in bursts)."""
        seen = await asyncio.to_thread(_fingerprint, self._paths)
        while True:
            await asyncio.sleep(interval)
            now = await asyncio.to_thread(_fingerprint, self._paths)
            if now != seen:
                await asyncio.sleep(interval / 2)  # let a multi-file save settle
                seen = await asyncio.to_thread(_fingerprint, self._paths)
                await self.reload("file change")

    def _write_status(self, state: str, error: str | None, attempted: str) -> None:
        status = {"revision": self.revision, "state": state, "error": error, "attempted": attempted, "time": time.time()}
        self._status_file.parent.mkdir(parents=True, exist_ok=True)
        temp = self._status_file.with_suffix(".tmp")
        temp.write_text(json.dumps(status, indent=2) + "\n")
        os.replace(temp, self._status_file)
