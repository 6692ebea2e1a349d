"""Ids: creation order is lexical order, also within one millisecond; time and cursors read back."""

from __future__ import annotations

import time

from wardgate.gateway.ids import first_id_at, id_time, new_id

ALPHABET = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def test_ids_made_within_one_millisecond_sort_in_creation_order() -> None:
    start = int(time.time()) + 0.5  # well inside one millisecond boundary
    made = [new_id(start + step * 2e-6) for step in range(200)]  # 200 ids, 2 µs apart: 0.4 ms
    assert len({made_id[:10] for made_id in made}) == 1, "all in the same millisecond"
    assert sorted(made) == made


def test_ids_made_back_to_back_sort_in_creation_order() -> None:
    made = [new_id() for _ in range(5000)]
    assert sorted(made) == made and len(set(made)) == len(made)


def test_layout_time_and_cursor() -> None:
    moment = 1_790_000_000.123
    made = new_id(moment)
    assert len(made) == 26 and set(made) <= ALPHABET
    assert id_time(made) == 1_790_000_000.123
    assert first_id_at(moment) <= made < first_id_at(moment + 0.002)
    assert first_id_at(moment - 0.002) < made
    later = new_id(moment + 0.000_5)  # half a millisecond on: the same millisecond, a later id
    assert later[:10] == made[:10] and made < later


def test_ids_at_the_same_moment_still_differ() -> None:
    moment = time.time()
    assert len({new_id(moment) for _ in range(1000)}) == 1000
