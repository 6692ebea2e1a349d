"""The listening socket ``wardgate up --workers N`` shares: SO_REUSEPORT, and Nagle off on the
connections it accepts (a response written in two pieces must not wait for the client's ACK)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from wardgate.proxy.workers import reuse_port_server

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def accepting() -> tuple[asyncio.Queue[socket.socket], Handler]:
    """A connection handler that puts the server side of each accepted connection on the queue."""
    accepted: asyncio.Queue[socket.socket] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put(writer.get_extra_info("socket"))
        await reader.read()
        writer.close()

    return accepted, handle


async def test_accepted_connections_have_nagle_off_and_the_port_is_shared() -> None:
    accepted, handle = accepting()
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


async def test_every_interface_is_bound_on_one_port_as_without_workers() -> None:
    """``""`` (every interface) is IPv4 and IPv6 and a name is each of its addresses, all on one
    port, as mitmproxy binds them without workers; the workers used to bind IPv4 only."""
    families = {info[0] for info in socket.getaddrinfo(None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)}
    loopback = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
    accepted, handle = accepting()
    first = await reuse_port_server(handle, "", 0)
    try:
        assert {s.family for s in first.sockets} == families
        (port,) = {s.getsockname()[1] for s in first.sockets}
        second = await reuse_port_server(handle, "", port)  # a second worker, same port, every family
        try:
            assert {s.family for s in second.sockets} == families
            for family in families:
                _, writer = await asyncio.open_connection(loopback[family], port)
                server_side = await asyncio.wait_for(accepted.get(), 5)
                assert server_side.family == family
                assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
                writer.close()
        finally:
            second.close()
        named = await reuse_port_server(handle, "localhost", 0)
        bound = {s.family for s in named.sockets}
        named.close()
        assert bound == {info[0] for info in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)}
    finally:
        first.close()
