"""The benchmark's upstream: a minimal HTTP/1.1 keep-alive server answering a small JSON body.

Runs in its own process (so its CPU is not the proxy's) on 127.0.0.1, one plain and one TLS port;
prints ``{"http": PORT, "https": PORT}`` on stdout once listening. Deliberately tiny: the upstream
should cost as little as possible so the proxies' differences show.

    python bench/upstream.py CERT_PEM KEY_PEM
"""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import sys

BODY = json.dumps({"ok": True, "items": [{"id": i, "name": f"item-{i}"} for i in range(4)]}).encode()
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


class Echo(asyncio.Protocol):
    """Answers every request head with RESPONSE; request bodies are not expected (GET only)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.buffer = self.buffer[end + 4 :]
            self.transport.write(RESPONSE)  # type: ignore[attr-defined]


async def main(cert: str, key: str) -> None:
    loop = asyncio.get_running_loop()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    plain = await loop.create_server(Echo, "127.0.0.1", 0, backlog=1024)
    tls = await loop.create_server(Echo, "127.0.0.1", 0, ssl=context, backlog=1024)
    ports = {"http": plain.sockets[0].getsockname()[1], "https": tls.sockets[0].getsockname()[1]}
    print(json.dumps(ports), flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


if __name__ == "__main__":
    try:  # the bench venv has uvloop; the upstream should not be the bottleneck
        import uvloop

        uvloop.run(main(sys.argv[1], sys.argv[2]))
    except ImportError:
        asyncio.run(main(sys.argv[1], sys.argv[2]))
