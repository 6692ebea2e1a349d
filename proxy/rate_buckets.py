"""Per-agent token buckets: one process's, or the ones all proxy processes of a gateway share.

With a bucket per process, an agent whose connections the kernel spreads over the workers of
``wardgate up --workers N`` could make N times ``requests_per_second``. ``SharedBuckets`` keeps the
buckets in one small file in the private run folder that every worker maps: a slot per (tenant,
agent), found by open addressing on a 64-bit hash of the key, holding that hash, the tokens and
when they were last counted (``time.monotonic()``, one clock for every process of the machine). A
take locks the slot's bytes (``fcntl.lockf``; the kernel drops the locks of a worker that dies),
so two workers never spend the same token, and agents never wait on each other: two system calls
per request. ``LocalBuckets`` is the same interface in one process: a dict.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("wardgate.proxy")
AgentKey = tuple[str, str]

_SLOT = struct.Struct("<Qdd")  # key hash (0: free), tokens, updated
SLOTS = 1 << 16  # 1.5 MiB; agents beyond what fits in PROBES slots of their hash get a bucket of their own per process
PROBES = 64


@dataclass(slots=True)
class TokenBucket:
    rate: float
    capacity: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """0 if a token was taken, else the seconds until one will be there."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class LocalBuckets:
    """One process's buckets."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate, self._burst = rate, float(burst)
        self._buckets: dict[AgentKey, TokenBucket] = {}

    def take(self, key: AgentKey, now: float) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst, self._burst, now)
        return bucket.take(now)


class SharedBuckets:
    """Buckets in a file every worker maps; ``create`` makes it (the first process), ``open`` joins it."""

    def __init__(self, path: Path, rate: float, burst: int, fd: int) -> None:
        self.path = path
        self._rate, self._burst = rate, float(burst)
        self._fd = fd  # kept open for the process's life: closing any fd of the file drops its locks
        self._map = mmap.mmap(fd, SLOTS * _SLOT.size)
        self._slots: dict[AgentKey, int] = {}  # where each key's slot is, once found
        self._overflow = LocalBuckets(rate, burst)

    @classmethod
    def create(cls, path: Path, rate: float, burst: int) -> SharedBuckets:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(fd, SLOTS * _SLOT.size)  # all zeros: every slot free
        return cls(path, rate, burst, fd)

    @classmethod
    def open(cls, path: Path, rate: float, burst: int) -> SharedBuckets:
        return cls(path, rate, burst, os.open(path, os.O_RDWR))

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    def take(self, key: AgentKey, now: float) -> float:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = self._find(key, now)
        if slot < 0:
            return self._overflow.take(key, now)
        offset = slot * _SLOT.size
        fcntl.lockf(self._fd, fcntl.LOCK_EX, _SLOT.size, offset)
        try:
            tag, tokens, updated = _SLOT.unpack_from(self._map, offset)
            tokens = min(self._burst, tokens + max(0.0, now - updated) * self._rate)
            wait = 0.0
            if tokens >= 1:
                tokens -= 1
            else:
                wait = (1 - tokens) / self._rate
            _SLOT.pack_into(self._map, offset, tag, tokens, max(now, updated))
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, _SLOT.size, offset)
        return wait

    def _find(self, key: AgentKey, now: float) -> int:
        """The key's slot, claimed (full bucket) if no process has it yet; -1 if none is free nearby."""
        digest = hashlib.blake2b(f"{key[0]}\0{key[1]}".encode(), digest_size=8).digest()
        tag = int.from_bytes(digest, "little") or 1
        for probe in range(PROBES):
            slot = (tag + probe) % SLOTS
            offset = slot * _SLOT.size
            fcntl.lockf(self._fd, fcntl.LOCK_EX, _SLOT.size, offset)
            try:
                (held,) = struct.unpack_from("<Q", self._map, offset)
                if held == 0:
                    _SLOT.pack_into(self._map, offset, tag, self._burst, now)
                if held in (0, tag):
                    return slot
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, _SLOT.size, offset)
        log.warning("shared rate-limit table is full near agent %s/%s: its bucket is per process", *key)
        return -1
