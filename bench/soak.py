"""Soak: a real gateway under moderate load for N minutes while its dependencies restart underneath it.

    scripts/postgres.sh .venv/bin/python bench/soak.py --minutes 10      (what `make soak` runs)

Loopback only. Parts: the gateway (`wardgate up`), an external OPA it reaches over HTTP, the
revocation state in PostgreSQL (from scripts/postgres.sh; without it, SQLite), an aiohttp upstream
on 127.0.0.1 (plain and TLS). ``--workers`` agents call in a loop through the proxy: allowed GETs
and POSTs over plain HTTP and through CONNECT tunnels, plus calls the policy denies.

Every ``--opa-every`` seconds OPA is killed and started again after ``--outage`` seconds; every
``--pg-every`` seconds PostgreSQL is stopped (pg_ctl stop -m fast) and started after ``--outage``
seconds; every ``--audit-every``
seconds the audit database's write lock is held for ``--outage`` seconds by another connection.

The verdict (exit status 1 if any fails):
- forwarded without intent: paths the upstream received that have no intent record in the audit
  log — must be 0;
- unexpected 5xx: any 5xx other than the documented fail-closed 503s (policy_unavailable,
  audit_unavailable, revocation_unavailable) — must be 0;
- memory flat: the gateway's RSS in the last minute vs the second minute (after warm-up) —
  growth must stay under 15 %.
The summary (markdown) is printed and written to ``--summary``.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import requests
import trustme
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
os.environ["PATH"] = f"{REPO / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}"

from support import POLICIES, OpaServer, Upstream, start_gateway, write_tenant_policy  # noqa: E402

FAIL_CLOSED = {"policy_unavailable", "audit_unavailable", "revocation_unavailable"}


class PathOnlyUpstream(Upstream):
    """The test upstream, remembering only the paths it received (a soak sends tens of thousands)."""

    def __init__(self, ca: trustme.CA) -> None:
        super().__init__(ca)
        self.paths: set[str] = set()
        self.lock = threading.Lock()

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        with self.lock:
            self.paths.add(request.path)
        return web.json_response({"ok": True})


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class PostgresRestarter:
    def __init__(self, dsn: str) -> None:
        import psycopg

        with psycopg.connect(dsn, connect_timeout=5) as conn:
            self.data_dir = conn.execute("SHOW data_directory").fetchone()[0]
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        assert candidates, "pg_ctl not found"
        self.pg_ctl = str(candidates[-1])
        self.as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        words = shlex.split(Path(self.data_dir, "postmaster.opts").read_text())
        options = words[1:]
        if "-D" in options:
            at = options.index("-D")
            del options[at:at + 2]
        self.options = shlex.join(options)

    def _ctl(self, *args: str) -> None:
        # -l: without a log file the server would keep our stdout open (and this call would never return).
        log = os.path.join(self.data_dir, "soak-restart.log")
        subprocess.run([*self.as_pg, self.pg_ctl, "-D", self.data_dir, "-l", log, "-w", "-t", "60", *args],
                       check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=90)

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")

    def start(self) -> None:
        # `pg_ctl start` does not reuse the options the server was started with (port, listen address,
        # socket folder); without them it came back on 5432 and the gateway rightly stayed closed.
        self._ctl("-o", self.options, "start")


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()
        self.unexpected: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.events: list[str] = []
        self.rss: list[tuple[float, int]] = []

    def note(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        with self.lock:
            self.events.append(f"{stamp} {text}")
        print(f"[soak {stamp}] {text}", flush=True)

    def worker(self, gateway, upstream: PathOnlyUpstream, agent: str, number: int) -> None:  # noqa: ANN001
        rng = random.Random(number)
        token = gateway.mint(agent, scopes=["read", "write"], ttl=3600)
        proxy = gateway.proxy_with(token)
        session = requests.Session()
        session.proxies = {"http": proxy, "https": proxy}
        # Per call: a session's own `verify` loses against REQUESTS_CA_BUNDLE in the environment.
        verify = str(gateway.ca_file)
        while not self.stop.is_set():
            kind = rng.choices(["get", "post", "tunnel", "denied"], [5, 2, 2, 1])[0]
            path = f"/allowed/soak/{uuid.uuid4()}"
            if kind == "get":
                call = lambda: session.get(f"{upstream.http_url}{path}", timeout=30)  # noqa: E731
            elif kind == "post":
                call = lambda: session.post(f"{upstream.http_url}{path}", json={"n": number}, timeout=30)  # noqa: E731
            elif kind == "tunnel":
                call = lambda: session.get(f"{upstream.https_url}{path}", timeout=30, verify=verify)  # noqa: E731
            else:
                call = lambda: session.delete(f"{upstream.http_url}/denied/{uuid.uuid4()}", timeout=30)  # noqa: E731
            started = time.perf_counter()
            try:
                response = call()
                status, code = response.status_code, response.headers.get("X-Wardgate-Error", "")
            except requests.RequestException as error:
                status, code = 0, f"{type(error).__name__} ({kind})"
                session.close()
                session = requests.Session()
                session.proxies = {"http": proxy, "https": proxy}
            elapsed = time.perf_counter() - started
            label = f"{status} {code}".strip()
            with self.lock:
                self.outcomes[label] += 1
                self.latencies.append(elapsed)
                if status >= 500 and code not in FAIL_CLOSED:
                    self.unexpected[label] += 1
            time.sleep(self.args.pause)

    def chaos(self, gateway, opa: OpaServer, pg: PostgresRestarter | None) -> None:  # noqa: ANN001
        started = time.monotonic()
        next_opa, next_pg, next_audit = self.args.opa_every, self.args.pg_every, self.args.audit_every
        while not self.stop.wait(1.0):
            now = time.monotonic() - started
            if now >= next_opa:
                next_opa += self.args.opa_every
                self.note("OPA killed")
                opa.kill()
                self.stop.wait(self.args.outage)
                opa.start()
                self.note("OPA started again")
            if pg is not None and now >= next_pg:
                next_pg += self.args.pg_every
                self.note("PostgreSQL stopped")
                pg.stop()
                self.stop.wait(self.args.outage)
                pg.start()
                self.note("PostgreSQL started again")
            if now >= next_audit:
                next_audit += self.args.audit_every
                conn = sqlite3.connect(gateway.settings.audit_db, timeout=10, isolation_level=None)
                conn.execute("BEGIN EXCLUSIVE")
                self.note("audit database locked")
                self.stop.wait(self.args.outage)
                conn.execute("ROLLBACK")
                conn.close()
                self.note("audit database released")

    def sample_memory(self, pid: int) -> None:
        started = time.monotonic()
        while not self.stop.wait(5.0):
            self.rss.append((time.monotonic() - started, rss_kib(pid)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--pause", type=float, default=0.02, help="seconds each worker waits between calls")
    parser.add_argument("--opa-every", type=float, default=60.0)
    parser.add_argument("--pg-every", type=float, default=90.0)
    parser.add_argument("--audit-every", type=float, default=75.0)
    parser.add_argument("--outage", type=float, default=3.0)
    parser.add_argument("--summary", type=Path, default=REPO / ".soak" / "summary.md")
    args = parser.parse_args()

    root = REPO / ".soak" / time.strftime("%Y%m%dT%H%M%S")
    root.mkdir(parents=True)
    ca = trustme.CA()
    ca_file = root / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    upstream = PathOnlyUpstream(ca)
    upstream.start()
    rules = [{"host": h, "methods": ["GET", "POST"], "paths": ["/allowed"]} for h in ("127.0.0.1", "localhost")]
    policy = write_tenant_policy(root / "policy", "acme", rules)
    opa = OpaServer([POLICIES, policy])
    opa.start()
    dsn = os.environ.get("WARDGATE_TEST_PG_DSN")
    pg = PostgresRestarter(dsn) if dsn else None
    state = f'\n[state]\nurl = "{dsn}"\n' if dsn else ""
    gateway = start_gateway(
        root / "gw", policy_paths=[policy], upstream_ca=ca_file,
        env={"WARDGATE_OPA__MODE": "external", "WARDGATE_OPA__URL": opa.url},
        extra_config=f'\n[audit]\ncommit_timeout = "1s"\n{state}',
    )
    soak = Soak(args)
    agents = [f"soak-{n}" for n in range(args.workers)]
    for agent in agents:
        gateway.create_agent(agent, "acme", ["read", "write"])
    threads = [threading.Thread(target=soak.worker, args=(gateway, upstream, agent, n), daemon=True)
               for n, agent in enumerate(agents)]
    threads.append(threading.Thread(target=soak.chaos, args=(gateway, opa, pg), daemon=True))
    threads.append(threading.Thread(target=soak.sample_memory, args=(gateway.process.pid,), daemon=True))
    soak.note(f"gateway pid {gateway.process.pid}, {args.workers} agents, {args.minutes:g} minutes, "
              f"state store {'PostgreSQL' if pg else 'SQLite'}")
    started = time.monotonic()
    try:
        for thread in threads:
            thread.start()
        soak.stop.wait(args.minutes * 60)
    finally:
        soak.stop.set()
        for thread in threads:
            thread.join(60)
        elapsed = time.monotonic() - started
        time.sleep(3)  # spooled records drain
        gateway.stop()
        opa.kill()
        upstream.stop()

    with sqlite3.connect(gateway.settings.audit_db) as conn:
        intents = {row[0] for row in conn.execute("SELECT path FROM audit_records WHERE kind = 'intent'")}
        kinds = dict(conn.execute("SELECT kind, count(*) FROM audit_records GROUP BY kind").fetchall())
    forwarded = {p for p in upstream.paths if p.startswith("/allowed/soak/")}
    without_intent = forwarded - intents
    total = sum(soak.outcomes.values())
    latencies = sorted(soak.latencies)
    samples = soak.rss
    second_minute = [kib for t, kib in samples if 60 <= t < 120] or [kib for _, kib in samples[:3]]
    last_minute = [kib for t, kib in samples if t >= samples[-1][0] - 60] if samples else []
    base, last = statistics.median(second_minute), statistics.median(last_minute)
    growth = (last - base) / base
    unexpected = sum(soak.unexpected.values())
    verdicts = {
        "forwarded without an intent record": (len(without_intent), len(without_intent) == 0),
        "5xx other than the documented fail-closed 503s": (unexpected, unexpected == 0),
        "gateway RSS growth, 2nd minute → last minute": (f"{base / 1024:.0f} → {last / 1024:.0f} MiB ({growth:+.1%})", growth < 0.15),
    }
    lines = [
        f"Soak run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {elapsed / 60:.1f} min, {args.workers} agents, "
        f"{total} calls ({total / elapsed:.0f}/s), loopback, 2 shared cores.",
        f"Outages: OPA killed every {args.opa_every:g}s, PostgreSQL stopped every {args.pg_every:g}s"
        f"{'' if pg else ' (skipped: no PostgreSQL)'}, audit DB locked every {args.audit_every:g}s; each outage {args.outage:g}s.",
        "",
        "| check | result | pass |",
        "|---|---|---|",
        *[f"| {name} | {value} | {'yes' if ok else '**NO**'} |" for name, (value, ok) in verdicts.items()],
        f"| calls without any HTTP answer (transport errors) | {sum(c for k, c in soak.outcomes.items() if k.startswith('0'))} | |",
        f"| forwarded calls / intent records | {len(forwarded)} / {len(intents)} | |",
        f"| latency p50 / p99 | {latencies[len(latencies) // 2] * 1000:.0f} ms / {latencies[int(len(latencies) * 0.99)] * 1000:.0f} ms | |",
        "",
        "Answers: " + ", ".join(f"`{label}` {count}" for label, count in soak.outcomes.most_common()),
        "",
        "Audit records by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())),
    ]
    if soak.unexpected:
        lines.append("Unexpected: " + ", ".join(f"`{k}` {v}" for k, v in soak.unexpected.items()))
    summary = "\n".join(lines) + "\n"
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text(summary)
    print("\n" + summary)
    print(f"gateway home and log kept in {root}", file=sys.stderr)
    return 0 if all(ok for _, ok in verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
