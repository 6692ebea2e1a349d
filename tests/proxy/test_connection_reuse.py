"""Pinned destinations keep working on kept-alive connections (a bug `make soak` found).

DestinationPin dials the vetted IP for a name. The server connection used to keep the IP as its
address, so mitmproxy never reused it for the next request naming the host: every request opened
another connection, and the sixth in one tunnel or keep-alive connection waited forever on
mitmproxy's limit of five connections per address.
"""

from __future__ import annotations

import uuid

import pytest
import requests

from support import Gateway, Upstream


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_many_requests_on_one_connection_to_a_name(gateway: Gateway, upstream: Upstream, scheme: str) -> None:
    proxy = gateway.proxy_with(gateway.mint("acme-bot"))
    port = upstream.https_port if scheme == "https" else upstream.http_port
    with requests.Session() as session:
        session.proxies = {"http": proxy, "https": proxy}
        for _ in range(12):
            path = f"/allowed/reuse/{uuid.uuid4()}"
            response = session.get(f"{scheme}://localhost:{port}{path}", verify=str(gateway.ca_file), timeout=10)
            assert response.status_code == 200
            assert upstream.count(path) == 1
