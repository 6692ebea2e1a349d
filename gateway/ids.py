"""Sortable, unguessable ids in the ULID layout (128 bits, Crockford base32): 48 bits of milliseconds,
then 20 bits of the nanoseconds within that millisecond, then 60 random bits.

The sub-millisecond part keeps ids in creation order within a millisecond, so a call's intent record
sorts before its outcome record even when both are made in the same millisecond (plain ULIDs order
those at random). Any ULID parser still reads the time from the first 48 bits."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two characters (ten bits) per lookup: a new id is made for every call and every audit record, and
# this is several times faster than one divmod per character.
_PAIRS = tuple(first + second for first in _ALPHABET for second in _ALPHABET)
_SHIFTS = tuple(range(120, -1, -10))


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, index = divmod(value, 32)
        chars.append(_ALPHABET[index])
    return "".join(reversed(chars))


def new_id(now: float | None = None) -> str:
    """A 26-character id whose lexical order follows creation time (to the clock's resolution)."""
    if now is None:
        millis, within = divmod(time.time_ns(), 1_000_000)
    else:  # milliseconds exactly as first_id_at counts them, so a cursor at ``now`` never sorts after this id
        scaled = now * 1000
        millis = int(scaled)
        within = min(int((scaled - millis) * 1_000_000), 999_999)
    value = millis << 80 | within << 60 | int.from_bytes(os.urandom(8), "big") >> 4
    return "".join([_PAIRS[value >> shift & 1023] for shift in _SHIFTS])


def first_id_at(moment: float) -> str:
    """The smallest id :func:`new_id` can make at ``moment``: a cursor for "from this time on"."""
    return _encode(int(moment * 1000), 10) + "0" * 16


def id_time(identifier: str) -> float:
    """Seconds since the epoch encoded in an id made by :func:`new_id`."""
    millis = 0
    for char in identifier[:10]:
        millis = millis * 32 + _ALPHABET.index(char)
    return millis / 1000
