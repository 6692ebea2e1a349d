"""Where an OPA is reached: ``http(s)://host:port`` (an external OPA) or ``unix:///path`` (the managed one).

The managed OPA listens on a Unix socket in the gateway's private run folder (0700, the socket
0600), never on a TCP port. On loopback TCP any local process could have reached OPA's REST API
and replaced its policies or data, and could have bound the port itself between the gateway
choosing it and OPA binding it, then answered every decision. A socket only the gateway's uid can
open rules out both, and with them decisions that do not come from the policy wardgate loaded.
"""

from __future__ import annotations

import aiohttp

UNIX = "unix://"


def unix_socket(url: str) -> str | None:
    """The socket path of a ``unix://`` address, None for any other."""
    return url[len(UNIX):] if url.startswith(UNIX) else None


def unix_url(path: str) -> str:
    return UNIX + path


def opa_session(url: str, timeout: float) -> tuple[aiohttp.ClientSession, str]:
    """An aiohttp session that reaches the OPA at ``url``, and the base URL to put paths after."""
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    path = unix_socket(url)
    if path is None:
        return aiohttp.ClientSession(timeout=client_timeout), url
    return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path), timeout=client_timeout), "http://localhost"
