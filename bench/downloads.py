"""Large downloads through bare mitmdump and through wardgate, side by side: time to the first byte,
time to the last, and how far the proxy's resident memory rose while it passed the body on.

A loopback upstream sends a body of ``--mb`` MiB in 1 MiB writes, its length announced
(``Content-Length``) or not (chunked); the client reads it through the proxy over plain HTTP, in
64 KiB pieces. Memory is the proxy process's VmRSS, sampled every 2 ms during the download, minus
its value before; the largest rise of the rounds is reported (a buffering proxy's allocator keeps
what the first download took, so later ones rise less). Targets alternate within each round.
Not a test.

    .venv/bin/python bench/downloads.py [--mb 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
import trustme
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench

PIECE = 1 << 20


def serve(megabytes: int, ready: list[int]) -> None:
    async def send(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if request.match_info["framing"] == "length":
            response.content_length = megabytes * PIECE
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        piece = b"w" * PIECE
        for _ in range(megabytes):
            await response.write(piece)
        await response.write_eof()
        return response

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/download/{framing}", send)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, bench.HOST, 0)
        await site.start()
        ready.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await asyncio.Event().wait()

    asyncio.run(main())


def rss(pid: int) -> int:
    return int(bench.rss_mb(pid) * (1 << 20))  # bytes


def download(target: bench.Target, url: str, expected: int) -> tuple[float, float, int]:
    """(ms to the first byte, ms to the last, peak RSS rise in bytes) of one download."""
    pid = target.pids[0]
    before = rss(pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss(pid))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    auth = f"agent:{target.auth}@" if target.auth else ""
    proxy = f"http://{auth}{target.proxy}"
    first, received = None, 0
    started = time.perf_counter()
    try:
        with requests.Session() as client:
            client.trust_env = False
            with client.get(url, proxies={"http": proxy}, stream=True, timeout=120) as response:
                response.raise_for_status()
                for part in response.iter_content(64 << 10):
                    if first is None:
                        first = time.perf_counter() - started
                    received += len(part)
        total = time.perf_counter() - started
    finally:
        done.set()
        sampler.join()
    if received != expected:
        raise SystemExit(f"{target.name}: {received} bytes of {expected}")
    return (first or total) * 1000, total * 1000, peak[0] - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ready: list[int] = []
    threading.Thread(target=serve, args=(args.mb, ready), daemon=True).start()
    while not ready:
        time.sleep(0.05)
    ca = trustme.CA()
    with tempfile.TemporaryDirectory(prefix="wg-downloads-") as tmp:
        root = Path(tmp)
        ca_file = root / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        mitm = bench.start_mitmdump(root, str(ca_file))
        wardgate, gateway = bench.start_wardgate(root / "wg", "wardgate", ca_file, ready[0], [])
        targets = [mitm, wardgate]
        results: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
        try:
            for round_ in range(args.rounds):
                for framing in ("length", "chunked"):
                    url = f"http://{bench.HOST}:{ready[0]}/download/{framing}"
                    for target in targets if round_ % 2 == 0 else reversed(targets):
                        results.setdefault((target.name, framing), []).append(download(target, url, args.mb * PIECE))
        finally:
            bench.stop(gateway)
            bench.stop(mitm.stop)
    print(f"{args.mb} MiB over plain HTTP, median of {args.rounds} downloads each (targets alternating)\n")
    print("| body | target | first byte ms (median) | last byte ms (median) | proxy RSS rise MB (largest) |")
    print("|---|---|---:|---:|---:|")
    for framing in ("length", "chunked"):
        for target in targets:
            runs = results[(target.name, framing)]
            first, total = (statistics.median(values) for values in list(zip(*runs, strict=True))[:2])
            rise = max(run[2] for run in runs)
            label = "Content-Length" if framing == "length" else "chunked"
            print(f"| {label} | {target.name} | {first:,.0f} | {total:,.0f} | {rise / 1e6:,.0f} |")
    for framing in ("length", "chunked"):
        bare, ours = results[(mitm.name, framing)], results[(wardgate.name, framing)]
        print(f"- {framing}: wardgate's time to the last byte = "
              f"{statistics.median(r[1] for r in ours) / statistics.median(r[1] for r in bare):.2f}x bare mitmdump's; "
              f"largest RSS rise {max(r[2] for r in ours) / 1e6:,.0f} MB against {max(r[2] for r in bare) / 1e6:,.0f} MB")


if __name__ == "__main__":
    main()
