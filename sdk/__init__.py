"""Agent-side library for wardgate. Imports nothing from ``wardgate.gateway`` or ``wardgate.proxy``."""

from __future__ import annotations

from urllib.parse import quote


def proxy_url(token: str, host: str = "127.0.0.1", port: int = 8080) -> str:
    """The ``HTTP_PROXY`` value that presents ``token`` as the Basic password."""
    return f"http://agent:{quote(token, safe='')}@{host}:{port}"
