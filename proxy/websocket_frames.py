"""Re-framing of changed WebSocket text messages at character boundaries, not inside a character.

When an addon changes a message's length (the WebSocket scrubber does, replacing a secret with
``[wardgate:scrubbed]``), mitmproxy 11 sends it in frames of ``Fragmentizer.FRAGMENT_SIZE`` bytes
and decodes each text frame on its own with ``errors="replace"``: a multi-byte UTF-8 character
that straddles a frame boundary reaches the agent as two U+FFFD characters. Here the cut is moved
back to the start of that character, so every frame holds whole characters and the message
arrives exactly as scrubbed. Binary messages, and messages whose length is unchanged (mitmproxy
reuses the original frame lengths, which already fell between characters), are framed as before.
"""

from __future__ import annotations

from collections.abc import Iterator

import wsproto.events
from mitmproxy.proxy.layers import websocket as websocket_layer

# mitmproxy's own class, also when this module is imported again after install().
_Original = getattr(websocket_layer.Fragmentizer, "wardgate_original", websocket_layer.Fragmentizer)


def _is_continuation(byte: int) -> bool:
    return byte & 0xC0 == 0x80  # 10xxxxxx: inside a UTF-8 character, never its first byte


class TextSafeFragmentizer(_Original):  # type: ignore[misc, valid-type]
    wardgate_original = _Original

    def __call__(self, content: bytes) -> Iterator[wsproto.events.Message]:
        if not self.is_text or len(content) == sum(self.fragment_lengths):
            yield from super().__call__(content)
            return
        offset = 0
        while len(content) - offset > self.FRAGMENT_SIZE:
            end = offset + self.FRAGMENT_SIZE
            while end > offset + 1 and _is_continuation(content[end]):
                end -= 1  # at most 3 steps: a UTF-8 character is at most 4 bytes
            yield self.msg(content[offset:end], False)
            offset = end
        yield self.msg(content[offset:], True)


def install() -> None:
    """Idempotent; checked against mitmproxy 11.0's websocket layer (tests/proxy/test_websocket_frames.py)."""
    if websocket_layer.Fragmentizer is not TextSafeFragmentizer:
        websocket_layer.Fragmentizer = TextSafeFragmentizer  # type: ignore[misc]
