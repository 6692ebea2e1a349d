"""``wardgate demo``: a scripted agent against a local upstream, through a real gateway process.

Starts ``wardgate up`` in a throw-away state folder on free loopback ports, then makes an allowed
call, a denied call and an unauthenticated call through the proxy, and prints the audit trail they
left. Needs nothing but this machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .audit import AuditQuery, query_records
from .audit_setup import audit_source
from .errors import DependencyUnavailable
from .identity import TokenIssuer
from .keys import KeyRing
from .settings import load_settings


def _call(proxy: str, url: str, method: str = "GET") -> tuple[int, dict[str, object], str | None]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy, "https": proxy}))
    request = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}"), response.headers.get("X-Wardgate-Audit-Id")
    except urllib.error.HTTPError as error:
        body = error.read()
        return error.code, json.loads(body or b"{}"), error.headers.get("X-Wardgate-Audit-Id")


def wait_for_listeners(path: Path, process: subprocess.Popen[bytes], timeout: float = 30.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DependencyUnavailable("the gateway exited during start-up", code="gateway_start_failed")
        if path.exists():
            return json.loads(path.read_text())
        time.sleep(0.05)
    raise DependencyUnavailable("the gateway did not start in time", code="gateway_start_failed")


def run_demo(say: Callable[[str], None], policies: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="wardgate-demo-") as temp:
        home = Path(temp) / "home"
        env = {
            **os.environ,
            "WARDGATE_HOME": str(home),
            "WARDGATE_CONFIG": "",
            "WARDGATE_DEMO__ENABLED": "true",
            "WARDGATE_DEMO__ECHO_LISTEN__PORT": "0",
            "WARDGATE_OPA__PATHS": str(policies),
        }
        say("starting a gateway in a throw-away state folder ...")
        process = subprocess.Popen(
            [sys.executable, "-m", "wardgate.gateway.cli", "up", "--proxy-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
            env=env, cwd=temp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            listeners = wait_for_listeners(home / "run" / "listeners.json", process)
            settings = load_settings(environ=env, cwd=Path(temp))
            token = TokenIssuer(KeyRing.load(settings.keys_dir), settings.identity).mint(
                agent=settings.demo.agent, tenant=settings.demo.tenant, user=settings.demo.user, scopes=("read",)
            )
            proxy, echo = f"http://{listeners['proxy']}", f"http://{listeners['echo']}"
            with_token = f"http://agent:{token}@{listeners['proxy']}"
            say(f"gateway up: proxy {proxy}, demo upstream {echo}\n")

            steps = [
                ("allowed  GET  echo service with a valid token", with_token, f"{echo}/orders?limit=2", "GET"),
                ("denied   POST echo service (agent lacks the 'write' scope)", with_token, f"{echo}/orders", "POST"),
                ("denied   GET  a host the policy does not list", with_token, "http://example.com/", "GET"),
                ("refused  GET  echo service with no identity", proxy, f"{echo}/orders", "GET"),
            ]
            for title, via, url, method in steps:
                status, body, audit_id = _call(via, url, method)
                error = body.get("error") if isinstance(body, dict) else None
                detail = f"{error['code']} {error.get('reasons') or ''}" if isinstance(error, dict) else "upstream answered"
                say(f"  {title}\n    -> {status} {detail}  (audit id {audit_id})")
            time.sleep(0.3)  # outcome records are committed just after the response
            say("\naudit trail (oldest first):")
            records = list(reversed(query_records(audit_source(settings), AuditQuery(limit=20))))
            for r in records:
                say(
                    f"  {r['call_id'][-8:]}  {r['kind']:<8} {r['agent'] or '-':<11} {r['user'] or '-':<6} "
                    f"{r['method']:<5} {r['host']}{r['path'] or ''}  decision={r['decision']} status={r['status']} "
                    f"{r['error'] or ''}"
                )
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
