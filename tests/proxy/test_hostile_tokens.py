"""Hostile tokens: each is refused with 407 and a stable code, on both doors (plain HTTP and
CONNECT), before any upstream connection is opened.

The "upstream" here is a bare TCP listener that counts the connections it accepts: with lazy
upstream connections, a token that got through would make the proxy dial it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from support import Gateway, Upstream, start_gateway
from wardgate.gateway.keys import KeyRing

LEEWAY = 30


def b64(data: bytes | dict[str, object]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class CountingListener:
    """Accepts TCP connections on 127.0.0.1 and counts them; never answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


@pytest.fixture(scope="module")
def gw(opa_binary: str, tmp_path_factory: pytest.TempPathFactory, acme_policy: Path, upstream_ca_file: Path) -> Iterator[Gateway]:
    gateway = start_gateway(
        tmp_path_factory.mktemp("hostile"), policy_paths=[acme_policy], upstream_ca=upstream_ca_file,
        extra_config=f"\n[identity]\nleeway = {LEEWAY}\n",
    )
    gateway.create_agent("acme-bot", "acme", ["read"])
    yield gateway
    gateway.stop()


class Forge:
    """Tokens built by hand, some with the gateway's own key (valid signatures on bad claims)."""

    def __init__(self, gw: Gateway) -> None:
        self.ring = KeyRing.load(gw.settings.keys_dir)
        self.kid = self.ring.signing.kid
        self.settings = gw.settings.identity

    def claims(self, **override: object) -> dict[str, object]:
        now = int(time.time())
        base: dict[str, object] = {
            "iss": self.settings.issuer, "aud": self.settings.audience, "sub": "alice", "act": {"sub": "acme-bot"},
            "tenant": "acme", "scope": "read", "jti": str(uuid.uuid4()), "iat": now, "exp": now + 300,
        }
        base.update(override)
        return {k: v for k, v in base.items() if v is not None}

    def signed(self, claims: dict[str, object] | None = None, **header: object) -> str:
        headers = {"kid": self.kid, "typ": "at+jwt", **header}
        return jwt.encode(claims or self.claims(), self.ring.signing.private_key, algorithm="EdDSA", headers=headers)

    def raw(self, header: dict[str, object], claims: dict[str, object], sign: Callable[[bytes], bytes]) -> str:
        signing_input = f"{b64(header)}.{b64(claims)}".encode()
        return signing_input.decode() + "." + b64(sign(signing_input))


def hostile_tokens(forge: Forge) -> dict[str, tuple[str, str]]:
    """name → (token, expected code)."""
    now = int(time.time())
    good = forge.signed()
    head, body, sig = good.split(".")
    public_pem = forge.ring.public[forge.kid].public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    other_ed = ed25519.Ed25519PrivateKey.generate()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64(other_ed.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw))}
    std = {"kid": forge.kid, "typ": "at+jwt"}
    tampered_body = b64({**json.loads(base64.urlsafe_b64decode(body + "==")), "sub": "mallory"})
    return {
        "forged_with_our_kid": (jwt.encode(forge.claims(), other_ed, algorithm="EdDSA", headers=std), "identity_invalid"),
        "tampered_payload": (f"{head}.{tampered_body}.{sig}", "identity_invalid"),
        "signature_stripped": (f"{head}.{body}.", "identity_invalid"),
        "hs256_public_key_as_secret": (
            forge.raw({"alg": "HS256", **std}, forge.claims(), lambda m: hmac.new(public_pem, m, hashlib.sha256).digest()),
            "identity_algorithm_refused"),
        "alg_none": (forge.raw({"alg": "none", **std}, forge.claims(), lambda m: b""), "identity_algorithm_refused"),
        "alg_None_case": (forge.raw({"alg": "None", **std}, forge.claims(), lambda m: b""), "identity_algorithm_refused"),
        "rs256": (jwt.encode(forge.claims(), rsa_key, algorithm="RS256", headers=std), "identity_algorithm_refused"),
        "es256_header_on_ed25519_kid": (
            jwt.encode(forge.claims(), ec_key, algorithm="ES256", headers=std), "identity_algorithm_refused"),
        "expired_beyond_leeway": (forge.signed(forge.claims(iat=now - 400, exp=now - LEEWAY - 10)), "identity_expired"),
        "expired_long_ago": (forge.signed(forge.claims(iat=now - 9000, exp=now - 8000)), "identity_expired"),
        "issued_in_the_future": (forge.signed(forge.claims(iat=now + 600, exp=now + 900)), "identity_not_yet_valid"),
        "wrong_audience": (forge.signed(forge.claims(aud="someone-else")), "identity_wrong_audience"),
        "list_audience": (forge.signed(forge.claims(aud=[forge.settings.audience, "someone-else"])), "identity_claims_invalid"),
        "wrong_issuer": (forge.signed(forge.claims(iss="https://evil.example")), "identity_wrong_issuer"),
        "typ_jwt": (forge.signed(typ="JWT"), "identity_wrong_type"),
        "typ_missing": (forge.raw({"alg": "EdDSA", "kid": forge.kid}, forge.claims(),
                                  lambda m: forge.ring.signing.private_key.sign(m)), "identity_wrong_type"),
        "lifetime_over_cap": (forge.signed(forge.claims(exp=now + 86400)), "identity_ttl_exceeded"),
        "missing_jti": (forge.signed(forge.claims(jti=None)), "identity_claims_invalid"),
        "missing_agent": (forge.signed(forge.claims(act=None)), "identity_claims_invalid"),
        "unknown_agent": (forge.signed(forge.claims(act={"sub": "nobody"})), "identity_unknown_agent"),
        "tenant_mismatch": (forge.signed(forge.claims(tenant="other")), "identity_claims_invalid"),
        "unknown_kid": (forge.signed(kid="no-such-key"), "identity_unknown_key"),
        "kid_not_a_string": (forge.raw({"alg": "EdDSA", "typ": "at+jwt", "kid": 7}, forge.claims(),
                                       lambda m: forge.ring.signing.private_key.sign(m)), "identity_malformed"),
        "header_jwk": (jwt.encode(forge.claims(), other_ed, algorithm="EdDSA", headers={**std, "jwk": jwk}),
                       "identity_header_refused"),
        "header_jku": (forge.signed(jku="https://evil.example/jwks.json"), "identity_header_refused"),
        "header_x5c": (forge.signed(x5c=["MIIB"]), "identity_header_refused"),
        # PyJWT itself rejects a crit naming extensions it does not implement.
        "header_crit": (forge.signed(crit=["exp"]), "identity_malformed"),
        "oversized": (forge.signed(forge.claims(pad="x" * 9000)), "identity_token_too_large"),
        "not_a_jwt": ("hello", "identity_malformed"),
        "bad_base64": ("@@@.@@@.@@@", "identity_malformed"),
        "header_not_json": (f"{b64(b'not json')}.{body}.{sig}", "identity_malformed"),
        "payload_not_json": (forge.raw({"alg": "EdDSA", **std}, b"[1,2",  # type: ignore[arg-type]
                                       lambda m: forge.ring.signing.private_key.sign(m)), "identity_malformed"),
    }


def connect(gw: Gateway, token: str, port: int) -> tuple[int, dict[str, str]]:
    """A raw CONNECT with Bearer credentials: the status line and headers of the answer."""
    with socket.create_connection(("127.0.0.1", gw.proxy_port), timeout=10) as sock:
        sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     f"Proxy-Authorization: Bearer {token}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    lines = data.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers


@pytest.fixture(scope="module")
def listener() -> CountingListener:
    return CountingListener()


@pytest.fixture(scope="module")
def table(gw: Gateway) -> dict[str, tuple[str, str]]:
    return hostile_tokens(Forge(gw))




NAMES = [
    "forged_with_our_kid", "tampered_payload", "signature_stripped", "hs256_public_key_as_secret", "alg_none",
    "alg_None_case", "rs256", "es256_header_on_ed25519_kid", "expired_beyond_leeway", "expired_long_ago",
    "issued_in_the_future", "wrong_audience", "list_audience", "wrong_issuer", "typ_jwt", "typ_missing",
    "lifetime_over_cap", "missing_jti", "missing_agent", "unknown_agent", "tenant_mismatch", "unknown_kid",
    "kid_not_a_string", "header_jwk", "header_jku", "header_x5c", "header_crit", "oversized", "not_a_jwt",
    "bad_base64", "header_not_json", "payload_not_json",
]


def test_table_names_cover_every_case(table: dict[str, tuple[str, str]]) -> None:
    assert sorted(NAMES) == sorted(table)


@pytest.mark.parametrize("name", NAMES)
def test_hostile_token_refused_on_both_doors(
    gw: Gateway, listener: CountingListener, table: dict[str, tuple[str, str]], name: str
) -> None:
    token, code = table[name]
    # Plain HTTP: the proxy would dial the listener for an accepted request.
    proxy = f"http://{gw.listeners['proxy']}"
    response = requests.get(f"http://127.0.0.1:{listener.port}/{uuid.uuid4()}", proxies={"http": proxy},
                            headers={"Proxy-Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 407, response.text
    assert response.headers["X-Wardgate-Error"] == code
    assert response.json()["error"]["code"] == code
    assert token not in response.text
    # CONNECT: the tunnel is refused.
    status, headers = connect(gw, token, listener.port)
    assert (status, headers.get("x-wardgate-error")) == (407, code)
    assert "Bearer" in headers.get("proxy-authenticate", "")
    assert listener.accepted == 0


def test_expired_within_leeway_is_accepted_and_reaches_upstream(gw: Gateway, upstream: Upstream) -> None:
    """The boundary's other side: the same forge, exp just inside the leeway, gets through."""
    forge = Forge(gw)
    now = int(time.time())
    token = forge.signed(forge.claims(iat=now - 400, exp=now - LEEWAY + 10))
    path = f"/allowed/{uuid.uuid4()}"
    response = requests.get(f"{upstream.http_url}{path}", proxies={"http": gw.proxy_with(token)}, timeout=10)
    assert response.status_code == 200
    assert upstream.count(path) == 1
