"""External issuers through a real gateway: an OIDC-style provider whose JWKS is served over HTTP by
a loopback aiohttp server (which the test can rotate, break and count), and a SPIFFE JWT-SVID issuer
whose JWKS is a file."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import requests
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from support import Gateway, Upstream, start_gateway

OIDC = "https://idp.example.test"
SPIFFE = "https://spire.example.test"
AUDIENCE = "wardgate-proxy"
REFETCH = 2.0
MAX_AGE = 4.0


def jwk_of(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> dict[str, object]:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    return {**json.loads(algorithm.to_jwk(key.public_key())), "kid": kid, "use": "sig"}


class JwksServer:
    """Serves /jwks.json from ``self.keys`` on 127.0.0.1; counts fetches; can answer 500."""

    def __init__(self) -> None:
        self.keys: list[dict[str, object]] = []
        self.fetches = 0
        self.broken = False
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _jwks(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.broken:
            return web.Response(status=500)
        return web.json_response({"keys": self.keys})

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_get("/jwks.json", self._jwks)
            runner = web.AppRunner(app, access_log=None)
            self._loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        assert ready.wait(10)

    def stop(self) -> None:
        if self._loop:
            self._loop.call_soon_threadsafe(self._loop.stop)


class Idp:
    def __init__(self) -> None:
        self.rsa = {"k1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
                    "k2": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
        self.svid_key = ec.generate_private_key(ec.SECP256R1())

    def oidc(self, kid: str = "k1", alg: str = "RS256", **claims: object) -> str:
        now = int(time.time())
        body = {"iss": OIDC, "aud": AUDIENCE, "sub": "alice", "azp": "acme-bot", "org": "acme", "scope": "read",
                "jti": str(uuid.uuid4()), "iat": now, "exp": now + 300, **claims}
        return jwt.encode(body, self.rsa.get(kid, self.rsa["k1"]), algorithm=alg, headers={"kid": kid, "typ": "JWT"})

    def svid(self, sub: str = "spiffe://example.org/agent/acme-bot") -> str:
        now = int(time.time())
        body = {"iss": SPIFFE, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 300}
        return jwt.encode(body, self.svid_key, algorithm="ES256", headers={"kid": "svid-1"})


@pytest.fixture(scope="module")
def idp() -> Idp:
    return Idp()


@pytest.fixture(scope="module")
def jwks_server(idp: Idp) -> Iterator[JwksServer]:
    server = JwksServer()
    server.keys = [jwk_of(idp.rsa["k1"], "k1")]
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(opa_binary: str, tmp_path_factory: pytest.TempPathFactory, acme_policy: Path, upstream_ca_file: Path,
       idp: Idp, jwks_server: JwksServer) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("issuers")
    svid_jwks = root / "spire-jwks.json"
    svid_jwks.write_text(json.dumps({"keys": [jwk_of(idp.svid_key, "svid-1"),
                                              {"kty": "oct", "kid": "hmac", "k": base64.urlsafe_b64encode(b"s" * 32).rstrip(b"=").decode()}]}))
    config = f"""
[[trusted_issuers]]
issuer = "{OIDC}"
jwks = "http://127.0.0.1:{jwks_server.port}/jwks.json"
unsafe_allow_http = true
audience = "{AUDIENCE}"
algorithms = ["RS256"]
token_types = ["JWT", "at+jwt"]
agent_claim = "azp"
tenant_claim = "org"
refresh_interval = "1h"
refetch_min_interval = "{REFETCH}s"
max_age = "{MAX_AGE}s"

[[trusted_issuers]]
issuer = "{SPIFFE}"
jwks = "{svid_jwks}"
audience = "{AUDIENCE}"
algorithms = ["ES256"]
token_types = ["", "JWT"]
agent_claim = "sub"
agent_prefix = "spiffe://example.org/agent/"
user_claim = "sub"
tenant = "acme"
"""
    gateway = start_gateway(root, policy_paths=[acme_policy], upstream_ca=upstream_ca_file, extra_config=config)
    gateway.create_agent("acme-bot", "acme", ["read"])
    yield gateway
    gateway.stop()


def call(gw: Gateway, upstream: Upstream, token: str) -> requests.Response:
    return requests.get(f"{upstream.http_url}/allowed/{uuid.uuid4()}", proxies={"http": gw.proxy_with(token)},
                        timeout=15)


def refused(response: requests.Response) -> tuple[int, str | None]:
    return response.status_code, response.headers.get("X-Wardgate-Error")


def test_oidc_token_is_mapped_to_agent_user_tenant(gw: Gateway, upstream: Upstream, idp: Idp) -> None:
    response = call(gw, upstream, idp.oidc())
    assert response.status_code == 200, response.text
    (intent, *_) = gw.records(response.headers["X-Wardgate-Audit-Id"])
    assert (intent["agent"], intent["user"], intent["tenant"]) == ("acme-bot", "alice", "acme")


def test_spiffe_svid_from_a_file_jwks(gw: Gateway, upstream: Upstream, idp: Idp) -> None:
    response = call(gw, upstream, idp.svid())
    assert response.status_code == 200, response.text
    assert refused(call(gw, upstream, idp.svid("spiffe://other.org/agent/acme-bot"))) == (407, "identity_claims_invalid")
    assert refused(call(gw, upstream, idp.svid("spiffe://example.org/agent/nobody"))) == (407, "identity_unknown_agent")


def test_hostile_tokens_for_external_issuers(gw: Gateway, upstream: Upstream, idp: Idp) -> None:
    public_pem = idp.rsa["k1"].public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo)

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(time.time())
    head = b64(json.dumps({"alg": "HS256", "kid": "k1", "typ": "JWT"}).encode())
    body = b64(json.dumps({"iss": OIDC, "aud": AUDIENCE, "sub": "alice", "azp": "acme-bot", "org": "acme",
                           "iat": now, "exp": now + 60}).encode())
    hs256 = f"{head}.{body}." + b64(hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest())
    hmac_key_in_jwks = jwt.encode({"iss": SPIFFE, "aud": AUDIENCE, "sub": "spiffe://example.org/agent/acme-bot",
                                   "iat": now, "exp": now + 60}, "s" * 32, algorithm="HS256", headers={"kid": "hmac"})
    cases = {
        "hs256_with_public_key": (hs256, "identity_algorithm_refused"),
        "hs256_against_oct_key": (hmac_key_in_jwks, "identity_algorithm_refused"),
        "ps256_not_on_allow_list": (idp.oidc(alg="PS256"), "identity_algorithm_refused"),
        "wrong_audience": (idp.oidc(aud="elsewhere"), "identity_wrong_audience"),
        "list_audience": (idp.oidc(aud=[AUDIENCE, "elsewhere"]), "identity_claims_invalid"),
        "expired": (idp.oidc(iat=now - 900, exp=now - 600), "identity_expired"),
        "tenant_claim_missing": (idp.oidc(org=None), "identity_claims_invalid"),
        "lifetime_over_cap": (idp.oidc(exp=now + 86400), "identity_ttl_exceeded"),
    }
    for name, (token, code) in cases.items():
        assert refused(call(gw, upstream, token)) == (407, code), name


def test_unknown_kid_triggers_at_most_one_rate_limited_refetch(
    gw: Gateway, upstream: Upstream, idp: Idp, jwks_server: JwksServer
) -> None:
    time.sleep(REFETCH)  # a refetch is allowed again
    jwks_server.keys = [jwk_of(idp.rsa["k1"], "k1"), jwk_of(idp.rsa["k2"], "k2")]
    before = jwks_server.fetches
    assert call(gw, upstream, idp.oidc(kid="k2")).status_code == 200  # rotation at the provider, picked up
    assert jwks_server.fetches == before + 1
    junk = [idp.oidc(kid=f"junk-{n}") for n in range(10)]
    assert all(refused(call(gw, upstream, t)) == (407, "identity_unknown_key") for t in junk)
    assert jwks_server.fetches == before + 1  # within the refetch interval: no fetch at all


def test_last_good_keys_are_kept_up_to_max_age_then_fail_closed(
    gw: Gateway, upstream: Upstream, idp: Idp, jwks_server: JwksServer
) -> None:
    time.sleep(REFETCH)
    jwks_server.keys = [jwk_of(idp.rsa["k1"], "k1"), jwk_of(idp.rsa["k2"], "k2")]
    assert call(gw, upstream, idp.oidc(kid="junk-x")).status_code == 407  # forces a fresh, good fetch
    jwks_server.broken = True
    try:
        # Through failed fetches, the last good set still verifies ...
        assert call(gw, upstream, idp.oidc(kid="k1")).status_code == 200
        time.sleep(REFETCH)
        assert call(gw, upstream, idp.oidc(kid="junk-y")).status_code == 407  # a failed refetch
        assert call(gw, upstream, idp.oidc(kid="k1")).status_code == 200
        # ... until it is older than max_age: then the issuer's tokens are refused, 503.
        deadline = time.monotonic() + 20
        while refused(call(gw, upstream, idp.oidc(kid="k1"))) != (503, "issuer_keys_unavailable"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert call(gw, upstream, idp.svid()).status_code == 200  # other issuers unaffected
    finally:
        jwks_server.broken = False
    deadline = time.monotonic() + 20
    while call(gw, upstream, idp.oidc(kid="k1")).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)
