"""The idempotency store on a real SQLite file, including several processes claiming one key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wardgate.gateway.idempotency import IdempotencyStore, Outcome, StoredResponse, fingerprint

A = fingerprint("POST", "https", "api.example", 443, "/charge", "application/json", b'{"n":1}')
B = fingerprint("POST", "https", "api.example", 443, "/charge", "application/json", b'{"n":2}')
RESPONSE = StoredResponse(201, [("Content-Type", "application/json")], b'{"ok":true}', "CALL1")


@pytest.fixture
def store(tmp_path: Path) -> IdempotencyStore:
    return IdempotencyStore(tmp_path / "idem.db")


def test_fingerprint_covers_every_part() -> None:
    base = ("POST", "https", "h", 443, "/p?q=1", "application/json", b"x")
    variants = [
        ("PUT", *base[1:]), (base[0], "http", *base[2:]), (*base[:2], "g", *base[3:]), (*base[:3], 8443, *base[4:]),
        (*base[:4], "/p?q=2", *base[5:]), (*base[:5], "text/plain", base[6]), (*base[:6], b"y"),
    ]
    assert len({fingerprint(*base), *(fingerprint(*v) for v in variants)}) == 1 + len(variants)


@pytest.mark.parametrize(
    ("settle", "second_print", "expected"),
    [
        (None, A, Outcome.IN_FLIGHT),
        ("complete", A, Outcome.REPLAY),
        ("complete", B, Outcome.MISMATCH),
        (None, B, Outcome.MISMATCH),
        ("unknown", A, Outcome.UNKNOWN),
        ("release", A, Outcome.CLAIMED),
    ],
)
def test_second_claim(store: IdempotencyStore, settle: str | None, second_print: str, expected: Outcome) -> None:
    assert store.claim("acme/bot/alice", "k1", A, "gw1", "CALL1", 1000.0, 60).outcome is Outcome.CLAIMED
    if settle == "complete":
        assert store.complete("acme/bot/alice", "k1", "gw1", RESPONSE)
    elif settle == "unknown":
        store.mark_unknown("acme/bot/alice", "k1", "gw1")
    elif settle == "release":
        store.release("acme/bot/alice", "k1", "gw1")
    result = store.claim("acme/bot/alice", "k1", second_print, "gw2", "CALL2", 1001.0, 60)
    assert result.outcome is expected
    if expected is Outcome.REPLAY:
        assert result.response == RESPONSE


def test_scope_separates_callers_and_records_expire(store: IdempotencyStore) -> None:
    assert store.claim("acme/bot/alice", "k", A, "gw", "C1", 1000.0, 60).outcome is Outcome.CLAIMED
    assert store.claim("acme/bot/bob", "k", A, "gw", "C2", 1000.0, 60).outcome is Outcome.CLAIMED
    assert store.complete("acme/bot/alice", "k", "gw", RESPONSE)
    assert store.claim("acme/bot/alice", "k", A, "gw", "C3", 1059.0, 60).outcome is Outcome.REPLAY
    assert store.claim("acme/bot/alice", "k", B, "gw", "C4", 1060.0, 60).outcome is Outcome.CLAIMED
    assert store.purge(5000.0) == 2


CLAIMER = """
import sys, time
from pathlib import Path
from wardgate.gateway.idempotency import IdempotencyStore
store = IdempotencyStore(Path(sys.argv[1]))
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
print(store.claim("s", "k", "f", sys.argv[3], "C", time.time(), 60).outcome.value)
"""


def test_one_claim_wins_across_processes(tmp_path: Path) -> None:
    import time

    db = tmp_path / "shared.db"
    IdempotencyStore(db).close()
    start = time.time() + 1.0
    procs = [
        subprocess.Popen([sys.executable, "-c", CLAIMER, str(db), str(start), f"p{i}"], stdout=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    outcomes = sorted(p.communicate(timeout=30)[0].strip() for p in procs)
    assert outcomes == ["claimed", "in_flight", "in_flight", "in_flight"]
