"""The interception CA agents trust: created once under ``<home>/ca``, private key 0600.

Written in the layout mitmproxy's certificate store reads (``mitmproxy-ca.pem`` holds key and
certificate), so the data plane signs leaf certificates with it; ``wardgate-ca.pem`` is the
public certificate to hand to clients (``wardgate ca path``).
"""

from __future__ import annotations

import datetime
import fcntl
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

PUBLIC_NAME = "wardgate-ca.pem"
STORE_BASENAME = "mitmproxy"


def ensure_ca(folder: Path) -> Path:
    """Create the CA if missing; return the path of its public certificate."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    public = folder / PUBLIC_NAME
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / f"{STORE_BASENAME}-ca.pem").exists():
            _create(folder)
    return public


def _create(folder: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "wardgate interception CA"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wardgate"),
    ])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    _write(folder / f"{STORE_BASENAME}-ca.pem", key_pem + cert_pem, 0o600)
    _write(folder / f"{STORE_BASENAME}-ca-cert.pem", cert_pem, 0o644)
    _write(folder / PUBLIC_NAME, cert_pem, 0o644)


def _write(path: Path, data: bytes, mode: int) -> None:
    temp = path.with_suffix(".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(temp, mode)
    os.replace(temp, path)
