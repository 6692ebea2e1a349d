"""The scrubber looks for the secret's forms with a substring search per form before it runs the
regular expression (``Injected.first_at``/``scrub``): it must find, replace and count exactly what
the expression alone does, in whole bodies and in bodies streamed in chunks of any size."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from wardgate.gateway.credentials import Injected, secret_forms
from wardgate.proxy.scrub import REPLACEMENT, StreamingScrub

TOKEN = "sk-live_a1+b2/c3=d4:e5&f6\"g7-0123456789"  # every encoding changes it: five distinct forms


def injected() -> Injected:
    return Injected("svc", TOKEN, f"Bearer {TOKEN}", secret_forms(TOKEN))


def bodies(seed: int) -> list[bytes]:
    """Random bodies with forms at random places: at the edges, overlapping, cut short, repeated."""
    rng = random.Random(seed)
    forms = injected().forms
    found = []
    for _ in range(200):
        parts = []
        for _ in range(rng.randint(0, 6)):
            parts.append(bytes(rng.choice(b"ab{}\":=+/%\\ ") for _ in range(rng.randint(0, 40))))
            form = rng.choice(forms)
            parts.append(form[:rng.randint(1, len(form))] if rng.random() < 0.3 else form)
        found.append(b"".join(parts))
    return found + [b"", forms[0] + forms[-1], forms[-1] + forms[0], forms[0][:-1], forms[0] * 3]


@pytest.mark.parametrize("seed", range(5))
def test_search_first_scrubs_exactly_as_the_expression(seed: int) -> None:
    secret = injected()
    for body in bodies(seed):
        match = secret.pattern.search(body)
        assert secret.first_at(body) == (match.start() if match else -1)
        assert secret.scrub(body, REPLACEMENT) == secret.pattern.subn(REPLACEMENT, body)


def test_a_shorter_form_that_starts_first_inside_a_longer_one_wins_as_in_the_expression() -> None:
    secret = Injected("svc", "t", "h", (b"bcdefgh", b"abcd"))  # longest first, as secret_forms sorts them
    body = b"xxabcdefghxx"  # "abcd" at 2 overlaps "bcdefgh" at 3: the expression takes the one at 2
    assert secret.first_at(body) == 2
    assert secret.scrub(body, b"#") == (b"xx#efghxx", 1) == secret.pattern.subn(b"#", body)


def test_a_body_without_the_secret_comes_back_as_it_is() -> None:
    body = b'{"items": ["' + b"x" * 100_000 + b'"]}'
    assert injected().scrub(body, REPLACEMENT) == (body, 0)


@pytest.mark.parametrize("seed", range(3))
def test_streamed_chunks_scrub_as_the_whole_body(seed: int) -> None:
    rng = random.Random(seed)
    secret = injected()
    for body in bodies(seed)[:60]:
        call = SimpleNamespace(scrub_count=0)
        scrub = StreamingScrub(secret, lambda data: data, call)  # type: ignore[arg-type]
        out, position = [], 0
        while position < len(body):
            size = rng.randint(1, 50)
            out += scrub(body[position:position + size])
            position += size
        out += scrub(b"")
        expected, count = secret.pattern.subn(REPLACEMENT, body)
        assert b"".join(out) == expected
        assert call.scrub_count == count
