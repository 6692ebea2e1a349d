"""Bodies decoded (Content-Encoding) without inflating past a bound.

A few hundred bytes can inflate to gigabytes: 317 bytes of brotli make 200 MB of zeros, 500 KB of
gzip 500 MB. mitmproxy's ``get_content`` inflates all of it, so a hostile upstream answering any
call (or an agent's request body) could make the gateway allocate gigabytes. Every place wardgate
reads a body decoded uses these helpers instead:

- :func:`decoded` for a whole body: at most ``limit + 1`` bytes come out, so the caller sees "larger
  than the limit" without holding more;
- :func:`incremental` for a relayed body, chunk by chunk: a chunk that would inflate past
  ``chunk_limit`` raises, and the relay is cut.

The codings are mitmproxy's (gzip with several members, deflate with or without its zlib header,
br, zstd across frames, identity); anything else, and a body that does not decode or ends early,
raises ValueError. brotli comes from brotlicffi, whose decoder can bound its output (the Brotli
module mitmproxy 11 pins cannot).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable

import brotlicffi
import zstandard

IDENTITY = ("", "identity", "none")
CHUNK_LIMIT = 64 << 20  # what one relayed chunk (at most 64 KiB read at a time) may inflate to
_ERRORS = (zlib.error, brotlicffi.error, zstandard.ZstdError)  # raised as ValueError


def decoded(raw: bytes, encoding: str | None, limit: int) -> bytes:
    """``raw`` decoded, cut at ``limit + 1`` bytes (so ``len(result) > limit`` means it was larger)."""
    name = (encoding or "").strip().lower()
    cap = limit + 1
    if name in IDENTITY:
        return raw if len(raw) <= cap else raw[:cap]  # no copy of a body within the limit
    if not raw:
        return b""
    try:
        if name in ("gzip", "x-gzip"):
            return _inflate(raw, zlib.MAX_WBITS | 16, cap, members=True)
        if name in ("deflate", "deflateraw"):
            try:
                return _inflate(raw, zlib.MAX_WBITS, cap)
            except zlib.error:  # no zlib header: the raw deflate some servers send
                return _inflate(raw, -zlib.MAX_WBITS, cap)
        if name == "br":
            decoder = brotlicffi.Decompressor()
            out = decoder.process(raw, output_buffer_limit=cap)
            if len(out) < cap and not decoder.is_finished():
                raise ValueError("the brotli body ends early")
            return out[:cap]
        if name == "zstd":
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw), read_across_frames=True) as reader:
                return _read(reader, cap)
    except _ERRORS as error:
        raise ValueError(f"the {name} body does not decode ({type(error).__name__})") from None
    raise ValueError(f"unknown content-encoding {encoding!r}")


def _inflate(raw: bytes, wbits: int, cap: int, *, members: bool = False) -> bytes:
    out = bytearray()
    data = raw
    while data and len(out) < cap:
        inflater = zlib.decompressobj(wbits)
        out += inflater.decompress(data, cap - len(out))
        if inflater.unconsumed_tail:
            break  # the cap was reached with input left
        if not inflater.eof:
            raise ValueError("the compressed body ends early")
        data = inflater.unused_data if members else b""
    return bytes(out[:cap])


def _read(reader: io.RawIOBase, cap: int) -> bytes:
    out = bytearray()
    while len(out) < cap:
        piece = reader.read(cap - len(out))
        if not piece:
            break
        out += piece
    return bytes(out)


def incremental(encoding: str | None, chunk_limit: int = CHUNK_LIMIT) -> Callable[[bytes], bytes] | None:
    """A decoder fed a body chunk by chunk (``b""`` at the end); None for an unknown coding. A chunk
    that inflates past ``chunk_limit``, or does not decode, raises ValueError."""
    name = (encoding or "").strip().lower()
    if name in IDENTITY:
        return lambda data: data
    decode = _chunk_decoder(name, chunk_limit)
    if decode is None:
        return None

    def decoding(data: bytes) -> bytes:
        try:
            return decode(data)
        except _ERRORS as error:
            raise ValueError(f"the {name} body does not decode ({type(error).__name__})") from None

    return decoding


def _chunk_decoder(name: str, chunk_limit: int) -> Callable[[bytes], bytes] | None:
    if name in ("gzip", "x-gzip", "deflate"):
        return _Inflater(chunk_limit)
    if name == "br":
        decoder = brotlicffi.Decompressor()

        def unbrotli(data: bytes) -> bytes:
            if not data:
                return b""
            out = decoder.process(data, output_buffer_limit=chunk_limit)
            if not decoder.can_accept_more_data():
                raise ValueError(f"a chunk inflates past {chunk_limit} bytes")
            return out

        return unbrotli
    if name == "zstd":
        sink = _CappedSink(chunk_limit)
        writer = zstandard.ZstdDecompressor().stream_writer(sink, write_size=1 << 16)

        def unzstd(data: bytes) -> bytes:
            if not data:
                return b""
            sink.parts.clear()
            sink.size = 0
            writer.write(data)
            return b"".join(sink.parts)

        return unzstd
    return None


class _Inflater:
    """gzip (one member after another) or zlib framing, told apart by the header, chunk by chunk."""

    def __init__(self, chunk_limit: int) -> None:
        self._limit = chunk_limit
        self._inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)

    def __call__(self, data: bytes) -> bytes:
        if not data:
            return self._inflater.flush()
        out = bytearray()
        while data:
            out += self._inflater.decompress(data, self._limit - len(out))
            if self._inflater.unconsumed_tail or len(out) >= self._limit:
                raise ValueError(f"a chunk inflates past {self._limit} bytes")
            if not self._inflater.eof:
                break
            data = self._inflater.unused_data  # the next gzip member, if any
            self._inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)
        return bytes(out)


class _CappedSink:
    """Where zstandard's stream writer puts what it inflates; refuses more than ``cap`` bytes per chunk."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.cap:
            raise ValueError(f"a chunk inflates past {self.cap} bytes")
        self.parts.append(bytes(data))
        return len(data)
