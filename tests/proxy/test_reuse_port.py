"""The listening socket ``wardgate up --workers N`` shares: SO_REUSEPORT, and Nagle off on the
connections it accepts (a response written in two pieces must not wait for the client's ACK)."""

from __future__ import annotations

import asyncio
import socket

from wardgate.proxy.workers import reuse_port_server


async def test_accepted_connections_have_nagle_off_and_the_port_is_shared() -> None:
    accepted: asyncio.Queue[socket.socket] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put(writer.get_extra_info("socket"))
        await reader.read()
        writer.close()

    first = await reuse_port_server(handle, "127.0.0.1", 0)
    port = first.sockets[0].getsockname()[1]
    second = await reuse_port_server(handle, "127.0.0.1", port)  # a second worker binds the same port
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        server_side = await asyncio.wait_for(accepted.get(), 5)
        assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert second.sockets[0].getsockname()[1] == port
        writer.close()
    finally:
        first.close()
        second.close()
