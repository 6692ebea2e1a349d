"""Identity benchmark: verification cost per request with and without the verified-token cache, and
revocation propagation time across two gateway replicas on one PostgreSQL.

    PATH=$PWD/.bin:$PWD/.venv/bin:$PATH scripts/postgres.sh .venv/bin/python bench/identity.py

Numbers are measured side by side in one run; the propagation part needs WARDGATE_TEST_PG_DSN
(scripts/postgres.sh) and the opa binary, and is skipped without them. Bounded: a few thousand
in-process verifications and 20 revocations.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from wardgate.gateway.agents import AgentDirectory, AgentRegistry  # noqa: E402
from wardgate.gateway.identity import TokenIssuer, TokenVerifier  # noqa: E402
from wardgate.gateway.keys import KeyRing  # noqa: E402
from wardgate.gateway.revocations import RevocationView  # noqa: E402
from wardgate.gateway.revocations_sqlite import SqliteRevocations  # noqa: E402
from wardgate.gateway.settings import IdentitySettings  # noqa: E402

ROUNDS = 3000
REVOKED = 10_000  # revocations in the view while verifying: lookups must stay O(1)


async def verification(folder: Path) -> None:
    settings = IdentitySettings()
    keys = KeyRing.load(folder / "keys")
    registry = AgentRegistry(folder / "state.db")
    registry.create("bench-bot", "acme", ["read"])
    directory = AgentDirectory(registry)
    await directory.refresh()
    store = SqliteRevocations(folder / "state.db")
    await store.open()
    for n in range(REVOKED):
        await store.add("token", f"revoked-{n}", "", "bench", time.time())
    view = RevocationView(store)
    await view.refresh()
    issuer = TokenIssuer(keys, settings)
    token = issuer.mint(agent="bench-bot", tenant="acme", user="alice", scopes=("read",))
    results: dict[str, float] = {}
    for label, cache_size in (("no cache", 0), ("cache", 4096)):
        verifier = TokenVerifier(keys, settings, directory, view, cache_size=cache_size)
        await verifier.verify(token)  # warm
        started = time.perf_counter()
        for _ in range(ROUNDS):
            await verifier.verify(token)
        results[label] = (time.perf_counter() - started) / ROUNDS * 1e6
    # What the cache skips and what stays on every request.
    verifier = TokenVerifier(keys, settings, directory, view, cache_size=0)
    principal = verifier.verify_signature(token)
    started = time.perf_counter()
    for _ in range(ROUNDS):
        verifier.verify_signature(token)
    signature_us = (time.perf_counter() - started) / ROUNDS * 1e6
    started = time.perf_counter()
    for _ in range(ROUNDS):
        await verifier.check_live(principal)
    live_us = (time.perf_counter() - started) / ROUNDS * 1e6
    external = await external_verification(folder, keys, settings, directory, view)
    await store.close()
    registry.close()
    print(f"token verification per request ({ROUNDS} rounds, {REVOKED} revocations in the view, EdDSA):")
    print(f"  without cache  {results['no cache']:8.1f} us   (signature+claims {signature_us:.1f} us, "
          f"expiry+revocation+agent {live_us:.1f} us)")
    print(f"  with cache     {results['cache']:8.1f} us")
    print(f"  ratio          {results['no cache'] / results['cache']:8.1f}x  (revocation still checked on every request)")
    print("an external issuer's token (JWT-SVID, ES256, JWKS from a file), same view:")
    print(f"  without cache  {external['no cache']:8.1f} us")
    print(f"  with cache     {external['cache']:8.1f} us   (the issuer's current key set is checked on every request)")
    print(f"  ratio          {external['no cache'] / external['cache']:8.1f}x")


async def external_verification(folder: Path, keys: KeyRing, settings: IdentitySettings, directory: AgentDirectory,
                                view: RevocationView) -> dict[str, float]:
    """Per-request cost for an external issuer's token, with and without the verified-token cache."""
    import json

    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    from wardgate.gateway.issuers import ExternalIssuer
    from wardgate.gateway.settings import TrustedIssuer

    key = ec.generate_private_key(ec.SECP256R1())
    jwks = folder / "spire-jwks.json"
    jwks.write_text(json.dumps({"keys": [{**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key())), "kid": "svid-1"}]}))
    trusted = TrustedIssuer(issuer="https://spire.example.test", jwks=str(jwks), audience="wardgate", algorithms=["ES256"],
                            token_types=["", "JWT"], agent_claim="sub", agent_prefix="spiffe://example.org/agent/",
                            user_claim="sub", tenant="acme")
    now = int(time.time())
    token = jwt.encode({"iss": trusted.issuer, "aud": "wardgate", "sub": "spiffe://example.org/agent/bench-bot",
                        "iat": now, "exp": now + 600}, key, algorithm="ES256", headers={"kid": "svid-1"})
    results: dict[str, float] = {}
    for label, cache_size in (("no cache", 0), ("cache", 4096)):
        verifier = TokenVerifier(keys, settings, directory, view, issuers=[ExternalIssuer(trusted)], cache_size=cache_size)
        await verifier.verify(token)  # warm: fetches the key set
        started = time.perf_counter()
        for _ in range(ROUNDS):
            await verifier.verify(token)
        results[label] = (time.perf_counter() - started) / ROUNDS * 1e6
    return results


def status(url: str, proxy: str) -> int:
    try:
        return requests.get(url, proxies={"http": proxy}, timeout=10).status_code
    except requests.exceptions.ConnectionError:
        # The revocation arrived while this very request was in flight: its connection was closed.
        return 407


def propagation(folder: Path) -> None:
    dsn = os.environ.get("WARDGATE_TEST_PG_DSN")
    if not dsn:
        print("revocation propagation: skipped (run under scripts/postgres.sh)")
        return
    import trustme

    from support import Upstream, start_gateway, write_tenant_policy

    upstream = Upstream(trustme.CA())
    upstream.start()
    policy = write_tenant_policy(folder / "policy", "acme", [{"host": "127.0.0.1", "methods": ["GET"], "paths": ["/allowed"]}])
    config = f'\n[state]\nurl = "{dsn}"\n'
    first = start_gateway(folder / "a", policy_paths=[policy], extra_config=config)
    shutil.copytree(first.settings.keys_dir, folder / "b" / "home" / "keys")
    second = start_gateway(folder / "b", policy_paths=[policy], extra_config=config)
    try:
        for gw in (first, second):
            gw.create_agent("bench-bot", "acme", ["read"])
        headers = {"Authorization": f"Bearer {first.admin_token}"}
        here, there = [], []
        for _ in range(20):
            token = first.mint("bench-bot")
            jti = __import__("jwt").decode(token, options={"verify_signature": False})["jti"]
            url = f"{upstream.http_url}/allowed/{uuid.uuid4()}"
            for gw in (first, second):
                assert requests.get(url, proxies={"http": gw.proxy_with(token)}, timeout=10).status_code == 200
            started = time.perf_counter()
            requests.post(f"{first.admin}/v1/revocations", json={"kind": "token", "subject": jti}, headers=headers,
                          timeout=10).raise_for_status()
            answered = time.perf_counter()
            assert requests.get(url, proxies={"http": first.proxy_with(token)}, timeout=10).status_code == 407
            here.append(answered - started)
            deadline = started + 10
            while status(url, second.proxy_with(token)) != 407:
                assert time.perf_counter() < deadline, "revocation never reached the second replica"
            there.append(time.perf_counter() - started)
        ms = lambda xs: f"p50 {statistics.median(xs) * 1000:6.1f} ms   max {max(xs) * 1000:6.1f} ms"  # noqa: E731
        print("revocation propagation (20 token revocations, PostgreSQL, LISTEN/NOTIFY + 250 ms poll):")
        print(f"  replica that took it (admin API answered, already enforced)   {ms(here)}")
        print(f"  other replica refusing the token (request to request)         {ms(there)}")
        print(f"  within the 1 s target: {sum(t < 1.0 for t in there)}/{len(there)}")
    finally:
        second.stop()
        first.stop()
        upstream.stop()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(verification(Path(tmp) / "verify"))
        propagation(Path(tmp))


if __name__ == "__main__":
    main()
