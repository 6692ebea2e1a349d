"""What scrubbing a response body costs: one regular expression over every form of the secret,
against a substring search per form first (``Injected.scrub``), side by side on the same bodies.

The forms are those of a token with characters that every encoding changes (so base64, URL and
JSON forms all differ); bodies are JSON of the given sizes, without and with one echoed secret.
Prints microseconds per body and the ratio. Not a test.

    .venv/bin/python bench/scrub.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from wardgate.gateway.credentials import Injected, secret_forms  # noqa: E402

TOKEN = "sk-live_a1+b2/c3=d4:e5&f6\"g7-0123456789abcdefghijklmnopqrstuvwxyz"
REPLACEMENT = b"[wardgate:scrubbed]"
SIZES = [("2 KB", 2 << 10), ("64 KB", 64 << 10), ("1 MB", 1 << 20), ("4 MB", 4 << 20)]


def body(size: int, echo: bytes | None) -> bytes:
    item = json.dumps({"id": 12345, "name": "item-12345", "text": "lorem ipsum dolor sit amet " * 3}).encode()
    data = (b'{"items": [' + b", ".join([item] * (size // (len(item) + 2) + 1)))[:size - 2] + b"]}"
    if echo is not None:  # one echo in the middle, as an upstream that reflects a header would
        middle = len(data) // 2
        data = data[:middle] + echo + data[middle:]
    return data


def timed(function: Callable[[bytes], object], data: bytes, rounds: int) -> float:
    """Median microseconds of ``function(data)`` over ``rounds`` batches."""
    repeat = max(1, (256 << 10) // len(data))
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeat):
            function(data)
        samples.append((time.perf_counter() - started) * 1e6 / repeat)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    forms = secret_forms(TOKEN)
    injected = Injected("bench", TOKEN, f"Bearer {TOKEN}", forms)

    def regex_only(data: bytes) -> object:
        return injected.pattern.subn(REPLACEMENT, data)

    def search_first(data: bytes) -> object:
        return injected.scrub(data, REPLACEMENT)

    print(f"{len(forms)} forms of the secret, {args.rounds} rounds, median per body")
    print(f"{'body':<18}{'regex only us':>14}{'search first us':>17}{'ratio':>8}")
    for label, size in SIZES:
        for echoed in (False, True):
            data = body(size, forms[-1] if echoed else None)
            assert regex_only(data) == search_first(data), "the two must scrub alike"
            slow, fast = timed(regex_only, data, args.rounds), timed(search_first, data, args.rounds)
            name = f"{label}{', 1 echo' if echoed else ''}"
            print(f"{name:<18}{slow:>14.1f}{fast:>17.1f}{slow / fast:>7.1f}x")


if __name__ == "__main__":
    main()
