"""Agent-side library for wardgate. Imports nothing from ``wardgate.gateway`` or ``wardgate.proxy``.

- :mod:`wardgate.sdk.runs`    durable runs: checkpointed steps, retries, durable sleep
- :mod:`wardgate.sdk.stores`  checkpoint stores (SQLite default, PostgreSQL) and ``create(url)``
- :mod:`wardgate.sdk.tokens`  run tokens that renew themselves before they expire
- :mod:`wardgate.sdk.http`    an httpx client wired to the proxy, stamping run, step and idempotency key
"""

from __future__ import annotations

from urllib.parse import quote


def proxy_url(token: str, host: str = "127.0.0.1", port: int = 8080) -> str:
    """The ``HTTP_PROXY`` value that presents ``token`` as the Basic password."""
    return f"http://agent:{quote(token, safe='')}@{host}:{port}"
