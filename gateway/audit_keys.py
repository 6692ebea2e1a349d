"""The audit checkpoint key: an Ed25519 key pair kept outside the audit database.

The private key signs checkpoints (``<home>/audit-keys/checkpoint.key``, 0600); the public key
(``checkpoint.pub``, raw hex) is what ``wardgate audit verify`` trusts. Copy the ``.pub`` file
somewhere the gateway host cannot write and pass it with ``--public-key`` to make forged
checkpoints detectable even by someone who controls the gateway host.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from .errors import ConfigError

PRIVATE_NAME = "checkpoint.key"
PUBLIC_NAME = "checkpoint.pub"


def key_id(public: ed25519.Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class CheckpointSigner:
    key_id: str
    private_key: ed25519.Ed25519PrivateKey

    def sign(self, payload: bytes) -> str:
        return self.private_key.sign(payload).hex()


def load_or_create_signer(folder: Path) -> CheckpointSigner:
    """The signing key under ``folder``, created (0600, folder 0700) on first use."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    private_path = folder / PRIVATE_NAME
    if not private_path.exists():
        private = ed25519.Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        temp = folder / f".{PRIVATE_NAME}.{os.getpid()}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, private_path)  # never replace a key another process created meanwhile
        except FileExistsError:
            pass
        finally:
            temp.unlink()
    try:
        private = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"audit checkpoint key {private_path} is unreadable: {type(exc).__name__}") from None
    if not isinstance(private, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"audit checkpoint key {private_path} is not an Ed25519 key")
    public = private.public_key()
    public_path = folder / PUBLIC_NAME
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    if not public_path.exists() or public_path.read_text().strip() != raw:
        public_path.write_text(raw + "\n")
    return CheckpointSigner(key_id(public), private)


def load_public_keys(paths: list[Path]) -> dict[str, ed25519.Ed25519PublicKey]:
    """Public keys by key id, from ``.pub`` files (raw hex) or folders holding them."""
    keys: dict[str, ed25519.Ed25519PublicKey] = {}
    for path in paths:
        files = sorted(path.glob("*.pub")) if path.is_dir() else [path] if path.exists() else []
        for file in files:
            try:
                public = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(file.read_text().strip()))
            except ValueError:
                raise ConfigError(f"{file} is not an Ed25519 public key in hex") from None
            keys[key_id(public)] = public
    return keys


def signature_valid(public: ed25519.Ed25519PublicKey, signature: str, payload: bytes) -> bool:
    try:
        public.verify(bytes.fromhex(signature), payload)
    except (InvalidSignature, ValueError):
        return False
    return True
