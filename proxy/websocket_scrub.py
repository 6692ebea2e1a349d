"""WebSocketScrubber: an injected secret an upstream echoes in a WebSocket message never reaches the agent.

A WebSocket upgrade on a credentialed destination carries the credential in its handshake like
any call; the upstream may then echo it in any later message. Each server→client message is
searched for the same forms as a response body (``Injected.pattern``: plain, base64, URL- and
JSON-escaped) and each occurrence is replaced by ``[wardgate:scrubbed]``. Client→server messages
pass untouched: the agent never held the secret, so it cannot send it.

What mitmproxy 11 hands the ``websocket_message`` hook (``proxy/layers/websocket.py``):

- a whole message: continuation frames are collected until ``message_finished`` before the hook
  runs, so a secret split across frames is found; a changed message is re-framed by mitmproxy.
- the decompressed payload: permessage-deflate is run by wsproto on both sides of mitmproxy, so
  the hook sees plain bytes and the agent gets the scrubbed message compressed again.
- text messages as UTF-8 bytes; the replacement is ASCII and only whole forms are replaced, so a
  text message stays valid UTF-8.

Fail closed, for a credentialed call only (``response`` hook, before the 101 reaches the agent):
502 ``response_uninspectable``, and the agent's connection is closed with it (the upstream side has
switched protocols and must not carry another request).

- ``websocket_extension_unsupported``: mitmproxy decodes no extension but permessage-deflate; any
  other one negotiated would relay payloads wardgate cannot read.
- ``upgrade_protocol_unsupported``: a 101 that mitmproxy does not take for a WebSocket (another
  protocol, or ``Sec-WebSocket-Version`` other than 13, which upstreams such as aiohttp accept)
  is relayed as raw TCP that no hook ever sees, so an echoed secret would pass unscrubbed.

The count is added to the call's ``scrub_count``; AuditTrail writes a WebSocket call's outcome
record when the socket ends (proxy/audit_trail.py), so the count is the whole session's.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import wsproto.extensions
import wsproto.utilities
from mitmproxy import http

from wardgate.gateway.audit_writer import AuditLog
from wardgate.gateway.credentials import Injected

from .call import call_of
from .inject import INJECTED
from .refusals import refuse
from .scrub import REPLACEMENT, uninspectable

READABLE_EXTENSIONS = frozenset({wsproto.extensions.PerMessageDeflate.name})


def unreadable_extensions(response: http.Response) -> list[str]:
    """Extensions the 101 negotiated that mitmproxy would relay without decoding. Parsed exactly as
    mitmproxy's WebsocketLayer.start parses them (same encoding, same case-sensitive comparison)."""
    header = response.headers.get("sec-websocket-extensions", "")
    items = wsproto.utilities.split_comma_header(header.encode("ascii", "replace"))
    names = (item.split(";", 1)[0].strip() for item in items)
    return [name for name in names if name and name not in READABLE_EXTENSIONS]


class WebSocketScrubber:
    def __init__(self, audit: AuditLog, audit_timeout: float) -> None:
        self._audit = audit
        self._audit_timeout = audit_timeout

    def response(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """Sync; hands back a coroutine only to refuse an upgrade it could not inspect."""
        response = flow.response
        if response is None or response.status_code != 101:
            return None
        if flow.metadata.get(INJECTED) is None or flow.metadata.get("wardgate.refused"):
            return None
        if flow.websocket is None:
            # Not a WebSocket by mitmproxy's test (another protocol, or a WebSocket version other
            # than 13): it would relay the connection as raw bytes, never shown to any hook.
            reason = "upgrade_protocol_unsupported"
        elif unreadable_extensions(response):
            reason = "websocket_extension_unsupported"
        else:
            return None
        flow.websocket = None  # no WebSocket follows: mitmproxy sends the refusal and ends the flow
        return self._refuse_upgrade(flow, reason)

    async def _refuse_upgrade(self, flow: http.HTTPFlow, reason: str) -> None:
        await refuse(flow, uninspectable(reason), self._audit, self._audit_timeout)
        assert flow.response is not None
        flow.response.headers["connection"] = "close"

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        injected: Injected | None = flow.metadata.get(INJECTED)
        if injected is None or flow.websocket is None:
            return
        message = flow.websocket.messages[-1]
        if message.from_client:
            return
        cleaned, count = injected.scrub(message.content, REPLACEMENT)
        if count:
            message.content = cleaned
            call_of(flow).scrub_count += count
