"""Re-framing of changed text messages (proxy/websocket_frames.py), driven directly: pure logic."""

from __future__ import annotations

import pytest
import wsproto.events
from mitmproxy.proxy.layers import websocket as websocket_layer

from wardgate.proxy import websocket_frames
from wardgate.proxy.websocket_frames import TextSafeFragmentizer

MIXED = "a€𝄞é" * 7  # characters of 1, 3, 4 and 2 bytes: every cut position falls inside one somewhere


def frames(fragmentizer: object, content: bytes, size: int) -> list[wsproto.events.Message]:
    fragmentizer.FRAGMENT_SIZE = size  # type: ignore[attr-defined]
    return list(fragmentizer(content))  # type: ignore[operator]


@pytest.mark.parametrize("size", [4, 5, 6, 7, 11])
@pytest.mark.parametrize("lead", ["", "x", "xy", "xyz"])
def test_a_changed_text_message_is_cut_between_characters(size: int, lead: str) -> None:
    text = lead + MIXED
    out = frames(TextSafeFragmentizer([b"whatever"], is_text=True), text.encode(), size)
    assert "".join(frame.data for frame in out) == text  # no U+FFFD, nothing lost
    assert all(len(frame.data.encode()) <= size for frame in out)
    assert [frame.message_finished for frame in out] == [False] * (len(out) - 1) + [True]


def test_mitmproxy_alone_would_break_characters() -> None:
    """Why the patch exists: when this starts failing, mitmproxy re-frames safely and it can go."""
    out = frames(TextSafeFragmentizer.wardgate_original([b"whatever"], is_text=True), MIXED.encode(), 5)
    assert "\ufffd" in "".join(frame.data for frame in out)


def test_binary_and_same_length_messages_are_framed_as_mitmproxy_does() -> None:
    original = TextSafeFragmentizer.wardgate_original
    binary = bytes(range(256)) * 3
    for fragments, is_text, content in [
        ([b"x"], False, binary),  # changed length, binary: FRAGMENT_SIZE cuts
        ([b"ab", b"\xe2\x82\xac", b"cd"], True, "zz€zz".encode()),  # same length: the original frame lengths
    ]:
        ours = frames(TextSafeFragmentizer(fragments, is_text), content, 100)
        theirs = frames(original(fragments, is_text), content, 100)
        assert [(f.data, f.message_finished) for f in ours] == [(f.data, f.message_finished) for f in theirs]


def test_install_is_idempotent_and_reaches_the_websocket_layer() -> None:
    websocket_frames.install()
    websocket_frames.install()
    assert websocket_layer.Fragmentizer is TextSafeFragmentizer
    assert TextSafeFragmentizer.wardgate_original is not TextSafeFragmentizer
    assert TextSafeFragmentizer.wardgate_original.__module__ == "mitmproxy.proxy.layers.websocket"
