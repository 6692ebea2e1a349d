"""Per-agent counts that limits.py enforces: a token bucket of requests and the open CONNECT tunnels;
one process's, or the ones all proxy processes of a gateway share.

Kept per process, an agent whose connections the kernel spreads over the workers of
``wardgate up --workers N`` could make N times ``requests_per_second`` and hold N times
``max_tunnels_per_agent``. ``SharedCounts`` keeps them in one small file in the private run folder
that every worker maps: a slot per (tenant, agent), found by open addressing on a 64-bit hash of
the key, holding that hash, the bucket's tokens and when they were last counted
(``time.monotonic()``, one clock for every process of the machine), and then, apart, each worker's
count of that agent's tunnels. Each check locks the slot's bytes (``fcntl.lockf``; the kernel drops
the locks of a worker that dies), so two workers never spend the same token or take the last
tunnel twice, and agents never wait on each other: two system calls per check. A worker that dies
leaves its tunnel counts behind; the first process zeroes them (``forget``) when it sees it go.
``LocalCounts`` is the same interface in one process.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("wardgate.proxy")
AgentKey = tuple[str, str]

_SLOT = struct.Struct("<Qdd")  # key hash (0: free), tokens, updated
_COUNT = struct.Struct("<I")  # one worker's open tunnels of one agent
SLOTS = 1 << 16  # agents beyond what fits within PROBES slots of their hash are counted per process
PROBES = 64


@dataclass(slots=True)
class TokenBucket:
    rate: float
    capacity: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """0 if a token was taken, else the seconds until one will be there. A ``now`` before the
        last count (another worker's reading of the clock, a moment older) refills nothing."""
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = max(now, self.updated)
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class LocalCounts:
    """One process's counts."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate, self._burst = rate, float(burst)
        self._buckets: dict[AgentKey, TokenBucket] = {}
        self._tunnels: dict[AgentKey, int] = {}

    def take(self, key: AgentKey, now: float) -> float:
        """0 if the agent may make a request now, else the seconds until it may."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst, self._burst, now)
        return bucket.take(now)

    def open_tunnel(self, key: AgentKey, limit: int) -> int | None:
        """None if the agent may open one more tunnel (it is counted), else how many it has open."""
        held = self._tunnels.get(key, 0)
        if held >= limit:
            return held
        self._tunnels[key] = held + 1
        return None

    def close_tunnel(self, key: AgentKey) -> None:
        held = self._tunnels.get(key, 0) - 1
        if held > 0:
            self._tunnels[key] = held
        else:
            self._tunnels.pop(key, None)

    def forget_quiet(self, now: float) -> None:
        """Drop the buckets of agents quiet long enough to be full again: a new one is the same."""
        refill = self._burst / self._rate
        for key, bucket in list(self._buckets.items()):
            if now - bucket.updated >= refill:
                del self._buckets[key]


class SharedCounts:
    """Counts in a file every worker maps; ``create`` makes it (the first process, worker 0),
    ``open`` joins it (worker ``index`` of ``workers``)."""

    def __init__(self, path: Path, rate: float, burst: int, workers: int, index: int, fd: int) -> None:
        self.path = path
        self._rate, self._burst = rate, float(burst)
        self._workers, self._index = workers, index
        self._fd = fd  # kept open for the process's life: closing any fd of the file drops its locks
        self._counts_at = SLOTS * _SLOT.size
        self._map = mmap.mmap(fd, _size(workers))
        self._slots: dict[AgentKey, int] = {}  # where each key's slot is, once found (-1: no room)
        self._overflow = LocalCounts(rate, burst)

    @classmethod
    def create(cls, path: Path, rate: float, burst: int, workers: int) -> SharedCounts:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(fd, _size(workers))  # all zeros: every slot free, no tunnel open
        return cls(path, rate, burst, workers, 0, fd)

    @classmethod
    def open(cls, path: Path, rate: float, burst: int, workers: int, index: int) -> SharedCounts:
        return cls(path, rate, burst, workers, index, os.open(path, os.O_RDWR))

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    def take(self, key: AgentKey, now: float) -> float:
        """0 if the agent may make a request now, else the seconds until it may."""
        slot = self._slot(key, now)
        if slot < 0:
            return self._overflow.take(key, now)
        offset = slot * _SLOT.size
        with self._locked(slot):
            tag, tokens, updated = _SLOT.unpack_from(self._map, offset)
            bucket = TokenBucket(self._rate, self._burst, tokens, updated)
            wait = bucket.take(now)
            _SLOT.pack_into(self._map, offset, tag, bucket.tokens, bucket.updated)
        return wait

    def open_tunnel(self, key: AgentKey, limit: int) -> int | None:
        """None if the agent may open one more tunnel (counted as this worker's), else how many it has open."""
        slot = self._slot(key, time.monotonic())
        if slot < 0:
            return self._overflow.open_tunnel(key, limit)
        with self._locked(slot):
            held = sum(_COUNT.unpack_from(self._map, self._count_at(slot, worker))[0] for worker in range(self._workers))
            if held >= limit:
                return held
            mine = self._count_at(slot, self._index)
            _COUNT.pack_into(self._map, mine, _COUNT.unpack_from(self._map, mine)[0] + 1)
        return None

    def close_tunnel(self, key: AgentKey) -> None:
        slot = self._slots.get(key, -1)
        if slot < 0:
            self._overflow.close_tunnel(key)
            return
        with self._locked(slot):
            mine = self._count_at(slot, self._index)
            _COUNT.pack_into(self._map, mine, max(0, _COUNT.unpack_from(self._map, mine)[0] - 1))

    def forget_quiet(self, now: float) -> None:
        """The per-process overflow's quiet buckets go; slots in the file stay claimed (they are fixed)."""
        self._overflow.forget_quiet(now)

    def forget(self, index: int) -> None:
        """Worker ``index`` is gone, and its tunnels with it: its counts go to zero."""
        start = self._count_at(0, index)
        self._map[start:start + SLOTS * _COUNT.size] = bytes(SLOTS * _COUNT.size)

    def _count_at(self, slot: int, worker: int) -> int:
        return self._counts_at + (worker * SLOTS + slot) * _COUNT.size

    def _locked(self, slot: int) -> _SlotLock:
        return _SlotLock(self._fd, slot * _SLOT.size)

    def _slot(self, key: AgentKey, now: float) -> int:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = self._find(key, now)
        return slot

    def _find(self, key: AgentKey, now: float) -> int:
        """The key's slot, claimed (a full bucket) if no process has it yet; -1 if none is free nearby."""
        digest = hashlib.blake2b(f"{key[0]}\0{key[1]}".encode(), digest_size=8).digest()
        tag = int.from_bytes(digest, "little") or 1
        for probe in range(PROBES):
            slot = (tag + probe) % SLOTS
            with self._locked(slot):
                (held,) = struct.unpack_from("<Q", self._map, slot * _SLOT.size)
                if held == 0:
                    _SLOT.pack_into(self._map, slot * _SLOT.size, tag, self._burst, now)
                if held in (0, tag):
                    return slot
        log.warning("shared limits table is full near agent %s/%s: it is counted per process", *key)
        return -1


class _SlotLock:
    """``fcntl.lockf`` on one slot's bytes, as a context manager."""

    __slots__ = ("_fd", "_offset")

    def __init__(self, fd: int, offset: int) -> None:
        self._fd, self._offset = fd, offset

    def __enter__(self) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_EX, _SLOT.size, self._offset)

    def __exit__(self, *_: object) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN, _SLOT.size, self._offset)


def _size(workers: int) -> int:
    return SLOTS * _SLOT.size + workers * SLOTS * _COUNT.size
