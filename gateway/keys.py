"""The gateway's own signing keys: Ed25519 by default, kept under ``<home>/keys`` with 0600.

Several keys may exist at once; the one named in ``keys/active`` signs, all verify. The key id is
the RFC 7638 thumbprint of the public key, so the same key always has the same ``kid``.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from .errors import ConfigError, Conflict, NotFound

_KID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(key: PublicKey) -> dict[str, str]:
    """The public JWK members (RFC 8037 for OKP, RFC 7518 for EC), without kid/alg/use."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}
    numbers = key.public_numbers()
    return {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
    }


def thumbprint(key: PublicKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256), used as the key id."""
    canonical = json.dumps(public_jwk(key), sort_keys=True, separators=(",", ":"))
    return _b64url(hashlib.sha256(canonical.encode()).digest())


def algorithm_for(key: PublicKey | PrivateKey) -> str:
    if isinstance(key, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)):
        return "EdDSA"
    return "ES256"


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private_key: PrivateKey

    @property
    def algorithm(self) -> str:
        return algorithm_for(self.private_key)


class KeyRing:
    """The keys in one folder. Read with :meth:`load`; the first start creates one."""

    def __init__(self, signing: SigningKey, public: dict[str, PublicKey], folder: Path | None = None) -> None:
        self.signing = signing
        self.public = public
        self.folder = folder

    def reload(self) -> None:
        """Re-read the folder in place (after ``keys rotate`` or ``keys revoke`` by another process)."""
        assert self.folder is not None, "only a KeyRing.load()ed ring can reload"
        fresh = KeyRing.load(self.folder, create=False)
        self.signing, self.public = fresh.signing, fresh.public

    @classmethod
    def load(cls, folder: Path, *, create: bool = True) -> "KeyRing":
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(folder / ".lock", "a") as lock:
            # CLI and gateway may both start first on a fresh machine; one of them creates the key.
            fcntl.flock(lock, fcntl.LOCK_EX)
            active = folder / "active"
            if not active.exists():
                if not create:
                    raise ConfigError(f"no signing key in {folder}; run `wardgate up` once")
                kid = _write_new_key(folder)
                active.write_text(kid + "\n")
            private: dict[str, PrivateKey] = {}
            for path in sorted(folder.glob("*.pem")):
                if path.stat().st_mode & 0o077:
                    raise ConfigError(f"{path} is readable by others; chmod 600 it", code="key_permissions")
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
                if not isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey)):
                    raise ConfigError(f"{path}: only Ed25519 and P-256 keys are supported")
                private[path.stem] = key
            kid = active.read_text().strip()
        if kid not in private:
            raise ConfigError(f"active key {kid!r} has no file in {folder}")
        public = {name: key.public_key() for name, key in private.items()}
        return cls(SigningKey(kid, private[kid]), public, folder)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        keys = []
        for kid, key in sorted(self.public.items()):
            keys.append({**public_jwk(key), "kid": kid, "alg": algorithm_for(key), "use": "sig"})
        return {"keys": keys}


def rotate(folder: Path) -> str:
    """Create a new key and make it the signer; older keys keep verifying until revoked."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        kid = _write_new_key(folder)
        temp = folder / "active.tmp"
        temp.write_text(kid + "\n")
        os.replace(temp, folder / "active")
    return kid


def retire(folder: Path, kid: str) -> None:
    """Move a revoked key out of the ring (into ``revoked/``) so it no longer verifies or publishes."""
    if not (folder / "active").exists():
        raise NotFound(f"no key {kid!r}: there is no key ring in {folder}", code="key_not_found")
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / "active").read_text().strip() == kid:
            raise Conflict("the active signing key cannot be revoked; run `wardgate keys rotate` first", code="key_active")
        source = folder / f"{kid}.pem"
        if not _KID.match(kid) or not source.exists():
            raise NotFound(f"no key {kid!r} in the key ring", code="key_not_found")
        (folder / "revoked").mkdir(exist_ok=True, mode=0o700)
        os.replace(source, folder / "revoked" / f"{kid}.pem")


def _write_new_key(folder: Path) -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    kid = thumbprint(key.public_key())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(folder / f"{kid}.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return kid
