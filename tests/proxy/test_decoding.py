"""proxy/decoding.py: bodies decoded as mitmproxy decodes them, but never inflated past a bound."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import brotli
import pytest
import zstandard
from mitmproxy.net import encoding

from wardgate.proxy.decoding import decoded, incremental

BODY = b'{"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 4}, "text": "' + b"lorem ipsum " * 4000 + b'"}'
ZEROS = 300 << 20  # what each bomb below inflates to


def encodings(body: bytes) -> list[tuple[str, bytes]]:
    return [
        ("identity", body),
        ("gzip", gzip.compress(body)),
        ("gzip", gzip.compress(body[:5000]) + gzip.compress(body[5000:])),  # two members
        ("deflate", zlib.compress(body)),
        ("deflate", zlib.compress(body)[2:-4]),  # raw deflate, no zlib header
        ("br", brotli.compress(body)),
        ("zstd", zstandard.ZstdCompressor().compress(body[:7000]) + zstandard.ZstdCompressor().compress(body[7000:])),
    ]


@pytest.mark.parametrize(("name", "raw"), encodings(BODY))
def test_whole_bodies_decode_as_mitmproxy_decodes_them(name: str, raw: bytes) -> None:
    assert decoded(raw, name, len(BODY)) == encoding.decode(raw, name) == BODY
    assert decoded(raw, name, 100) == BODY[:101]  # one byte past the limit says "larger"


@pytest.mark.parametrize(("name", "raw"), [("gzip", gzip.compress(BODY)[:-40]), ("br", brotli.compress(BODY)[:-5]),
                                           ("deflate", zlib.compress(BODY)[:-40]), ("x-weird", BODY), ("gzip", b"not gzip")])
def test_bodies_that_do_not_decode_raise(name: str, raw: bytes) -> None:
    with pytest.raises(ValueError):
        decoded(raw, name, len(BODY))


@pytest.mark.parametrize(("name", "raw"), [("gzip", gzip.compress(BODY)[:10] + b"garbage" * 10),
                                           ("br", b"\xff" * 64), ("zstd", b"\x28\xb5\x2f\xfd" + b"\xff" * 64)])
def test_a_relayed_body_that_does_not_decode_raises_value_error(name: str, raw: bytes) -> None:
    decode = incremental(name)
    assert decode is not None
    with pytest.raises(ValueError):
        decode(raw)
        decode(b"")


@pytest.mark.parametrize(("name", "raw"), [entry for entry in encodings(BODY) if entry[0] != "deflate" or entry[1][:1] == b"x"])
def test_relayed_bodies_decode_chunk_by_chunk(name: str, raw: bytes) -> None:
    decode = incremental(name)
    assert decode is not None
    assert b"".join(decode(raw[start:start + 7]) for start in range(0, len(raw), 7)) + decode(b"") == BODY


def bombs() -> list[tuple[str, bytes]]:
    zeros = bytes(ZEROS)
    return [("gzip", gzip.compress(zeros, 9)), ("deflate", zlib.compress(zeros, 9)), ("br", brotli.compress(zeros, quality=5)),
            ("zstd", zstandard.ZstdCompressor().compress(zeros))]


@pytest.fixture(scope="module")
def compressed_zeros() -> dict[str, bytes]:
    return dict(bombs())


@pytest.mark.parametrize("name", ["gzip", "deflate", "br", "zstd"])
def test_a_bomb_is_cut_at_the_limit_without_inflating_it(compressed_zeros: dict[str, bytes], name: str) -> None:
    raw = compressed_zeros[name]
    tracemalloc.start()
    try:
        out = decoded(raw, name, 1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out == bytes((1 << 20) + 1)
    assert peak < 16 << 20, f"{name}: {peak} bytes allocated for a {len(raw)}-byte body"  # the whole: 300 MiB


@pytest.mark.parametrize("name", ["gzip", "br", "zstd"])
def test_a_relayed_chunk_that_inflates_past_its_limit_raises(compressed_zeros: dict[str, bytes], name: str) -> None:
    raw = compressed_zeros[name]
    decode = incremental(name, chunk_limit=8 << 20)
    assert decode is not None
    tracemalloc.start()
    try:
        with pytest.raises(ValueError):
            for start in range(0, len(raw), 64 << 10):
                decode(raw[start:start + (64 << 10)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20
