"""The benchmark's load client: N keep-alive connections, each sending GETs back to back.

Runs in its own process. Plain HTTP goes to the proxy in absolute form; HTTPS opens one CONNECT
tunnel per connection, then TLS (intercepted by mitmproxy/wardgate, end to end through squid) and
keeps it. A proxy credential goes in ``Proxy-Authorization`` (on the CONNECT, or on every plain
request). Prints one JSON object: requests, errors, elapsed, latencies' median and p99 (ms).

    python bench/loadgen.py --url http://localhost:PORT/x [--proxy 127.0.0.1:PORT] [--auth TOKEN]
                            [--ca FILE] --concurrency 8 --duration 3 --warmup 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import ssl
import time
from urllib.parse import urlsplit


class Failed(Exception):
    pass


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        elif name.strip().lower() == b"transfer-encoding":
            raise Failed("chunked responses are not expected from the bench upstream")
    if length:
        await reader.readexactly(length)
    return status


async def _open(args: argparse.Namespace) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A connection ready for requests, and the request bytes to send on it."""
    url = urlsplit(args.url)
    host, port = url.hostname or "localhost", url.port or (443 if url.scheme == "https" else 80)
    auth = b""
    if args.auth:
        basic = base64.b64encode(f"agent:{args.auth}".encode()).decode()
        auth = f"Proxy-Authorization: Basic {basic}\r\n".encode()
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    origin = f"Host: {host}:{port}\r\n".encode()
    if args.proxy:
        proxy_host, _, proxy_port = args.proxy.rpartition(":")
        reader, writer = await asyncio.open_connection(proxy_host, int(proxy_port))
    else:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if url.scheme == "https":
        if args.proxy:
            writer.write(f"CONNECT {host}:{port} HTTP/1.1\r\n".encode() + origin + auth + b"\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            if int(head[9:12]) != 200:
                raise Failed(f"CONNECT answered {head[:40]!r}")
        context = ssl.create_default_context(cafile=args.ca)
        await writer.start_tls(context, server_hostname=host)
        request = f"GET {path} HTTP/1.1\r\n".encode() + origin + b"\r\n"
    elif args.proxy:
        request = f"GET {args.url} HTTP/1.1\r\n".encode() + origin + auth + b"\r\n"
    else:
        request = f"GET {path} HTTP/1.1\r\n".encode() + origin + b"\r\n"
    return reader, writer, request


async def _worker(args: argparse.Namespace, window: asyncio.Future[tuple[float, float]], opened: list[int],
                  latencies: list[float], errors: list[str]) -> None:
    try:
        reader, writer, request = await _open(args)
    finally:
        opened.append(1)
        if len(opened) == args.concurrency and not window.done():
            # The clock starts once every connection is open: tunnels and TLS handshakes are not measured.
            now = time.perf_counter()
            window.set_result((now + args.warmup, now + args.warmup + args.duration))
            print("open", flush=True)  # bench/run.py reads the proxy's CPU over the same window
    start, stop = await window
    try:
        while True:
            began = time.perf_counter()
            if began >= stop:
                return
            writer.write(request)
            status = await _read_response(reader)
            ended = time.perf_counter()
            if status != 200:
                errors.append(f"status {status}")
                if len(errors) > 50:
                    return
            elif began >= start:
                latencies.append(ended - began)
    finally:
        writer.close()


async def run(args: argparse.Namespace) -> dict[str, object]:
    window: asyncio.Future[tuple[float, float]] = asyncio.get_running_loop().create_future()
    opened: list[int] = []
    latencies: list[float] = []
    errors: list[str] = []
    results = await asyncio.gather(
        *(_worker(args, window, opened, latencies, errors) for _ in range(args.concurrency)), return_exceptions=True
    )
    errors += [repr(r) for r in results if isinstance(r, BaseException)]
    latencies.sort()
    count = len(latencies)
    return {
        "requests": count,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "seconds": args.duration,
        "rps": count / args.duration,
        "median_ms": latencies[count // 2] * 1000 if count else None,
        "p99_ms": latencies[min(count - 1, int(count * 0.99))] * 1000 if count else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--proxy")
    parser.add_argument("--auth")
    parser.add_argument("--ca")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    args = parser.parse_args()
    try:  # uvloop keeps the client's own cost per request low
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
