"""Which negotiated WebSocket extensions wardgate can read (proxy/websocket_scrub.py): a table."""

from __future__ import annotations

import pytest
from mitmproxy import http

from wardgate.proxy.websocket_scrub import unreadable_extensions


@pytest.mark.parametrize(
    ("header", "unreadable"),
    [
        (None, []),
        ("", []),
        ("permessage-deflate", []),
        ("permessage-deflate; client_max_window_bits=12; server_no_context_takeover", []),
        ("x-webkit-deflate-frame", ["x-webkit-deflate-frame"]),
        ("permessage-deflate, x-custom; level=3", ["x-custom"]),
        # mitmproxy compares names case-sensitively and would not decode this one: refuse it.
        ("PerMessage-Deflate", ["PerMessage-Deflate"]),
        ("perm\u00e9ssage-deflate", ["perm?ssage-deflate"]),  # not ASCII: never mistaken for the real one
    ],
)
def test_only_permessage_deflate_is_readable(header: str | None, unreadable: list[str]) -> None:
    response = http.Response.make(101, b"", {"Upgrade": "websocket"})
    if header is not None:
        response.headers["Sec-WebSocket-Extensions"] = header
    assert unreadable_extensions(response) == unreadable
