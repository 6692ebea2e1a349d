"""What a credential costs per call: injected + scrubbed calls vs the same calls with no binding.

Runs a real gateway, OPA and a TLS upstream on loopback; sends N sequential GETs over one
keep-alive tunnel per case, and prints median and p90 latencies and their ratio. Not a test.

    .venv/bin/python bench/credentials.py [N]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests
import trustme

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "proxy")]

from credential_upstream import CredentialUpstream  # noqa: E402
from support import start_gateway, write_tenant_policy  # noqa: E402
from wardgate.gateway.vault import KeySource, Vault  # noqa: E402

SECRET = "bench-token-0123456789abcdefghij"


def measure(session: requests.Session, url: str, ca: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        # verify per request: a session-level verify loses to REQUESTS_CA_BUNDLE in the environment.
        response = session.get(url, timeout=20, verify=ca)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
    return times


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    ca = trustme.CA()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ca_file = root / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        up = CredentialUpstream(ca, 2)
        up.start()
        policy = write_tenant_policy(root / "policy", "acme", [{"host": "localhost", "methods": ["GET"]}])
        config = f'[services.bench]\nhosts = ["localhost"]\nports = [{up.ports[0]}]\n'
        gw = start_gateway(root / "gw", policy_paths=[policy], upstream_ca=ca_file, extra_config=config)
        try:
            gw.create_agent("bench-bot", "acme", ["read"])
            vault = Vault(gw.settings.state_db, KeySource(gw.settings), create_keys=True)
            vault.put("acme", "alice", "bench", "secret", SECRET.encode())
            vault.close()
            time.sleep(0.5)  # the gateway re-reads the agent registry every 0.2 s
            proxy = gw.proxy_with(gw.mint("bench-bot", ttl=3600))
            results = {}
            for name, url in [("no credential", up.url(1, "/allowed/x")), ("injected + scrubbed", up.url(0, "/allowed/x"))]:
                session = requests.Session()
                session.proxies = {"https": proxy}
                measure(session, url, str(gw.ca_file), 20)  # warm-up: TLS, connection, vault key load
                results[name] = measure(session, url, str(gw.ca_file), n)
            base = statistics.median(results["no credential"])
            print(f"{n} sequential GETs per case, one keep-alive tunnel each (echo body ~1 KiB)")
            for name, times in results.items():
                median, p90 = statistics.median(times), statistics.quantiles(times, n=10)[-1]
                print(f"  {name:22s} median {median:6.2f} ms  p90 {p90:6.2f} ms  ratio {median / base:4.2f}x")
        finally:
            gw.stop()
            up.stop()


if __name__ == "__main__":
    main()
