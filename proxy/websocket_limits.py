"""A bound on the size of one WebSocket message, either way (``limits.max_websocket_message_bytes``).

mitmproxy collects every frame of a message, inflated when permessage-deflate is on, before any
hook sees it (proxy/layers/websocket.py). Without a bound, a peer that never finishes a message, or
sends a small compressed one that inflates a thousandfold, makes the gateway hold all of it in
memory. ``BoundedConnection`` counts the payload of the message being collected as wsproto hands it
over (each received chunk, already inflated). Past the limit the session ends the way RFC 6455
§7.4.1 says: close code 1009 ("message too big") toward both peers, and the call's outcome record
says ``websocket_message_too_big`` (proxy/audit_trail.py).

mitmproxy's websocket layer builds its two connections from the module attribute
``WebsocketConnection``; ``install`` replaces it with this subclass, as websocket_frames does for
the Fragmentizer. The limit is the process's one gateway's setting.
"""

from __future__ import annotations

from collections.abc import Iterator

import wsproto.events
from mitmproxy import http
from mitmproxy.proxy.layers import websocket as websocket_layer

MESSAGE_TOO_BIG = 1009
REASON = "wardgate: message too big"

# mitmproxy's own class, also when this module is imported again after install().
_Original = getattr(websocket_layer.WebsocketConnection, "wardgate_original", websocket_layer.WebsocketConnection)


class BoundedConnection(_Original):  # type: ignore[misc, valid-type]
    wardgate_original = _Original
    max_message = 16 << 20

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._collected = 0  # payload bytes of the message being collected

    def events(self) -> Iterator[wsproto.events.Event]:
        for event in super().events():
            if isinstance(event, wsproto.events.Message):
                data = event.data
                self._collected += len(data) if isinstance(data, (bytes, bytearray)) else len(data.encode())
                if self._collected > self.max_message:
                    self._collected = 0
                    # The layer relays a close as if this peer had sent it: 1009 to both, then both closed.
                    yield wsproto.events.CloseConnection(code=MESSAGE_TOO_BIG, reason=REASON)
                    return
                if event.message_finished:
                    self._collected = 0
            yield event


def ended_for_size(flow: http.HTTPFlow) -> bool:
    """The session ended because a message passed the limit (the audit error, not the peer's word)."""
    websocket = flow.websocket
    return websocket is not None and websocket.close_code == MESSAGE_TOO_BIG and websocket.close_reason == REASON


def install(max_message: int) -> None:
    """Idempotent; checked against mitmproxy 11.0's websocket layer (tests/proxy/test_websockets.py)."""
    BoundedConnection.max_message = max_message
    if websocket_layer.WebsocketConnection is not BoundedConnection:
        websocket_layer.WebsocketConnection = BoundedConnection  # type: ignore[misc]
