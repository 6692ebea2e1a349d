"""The credential vault: users' secrets per tenant, user and service, encrypted at rest.

Envelope encryption with AES-256-GCM (``cryptography``):

- every record has its own random 256-bit data key; the secret is sealed with it, with associated
  data naming the record's tenant, user, service and kind, so a ciphertext copied onto another row
  (another user, another service) fails to open instead of handing one user's secret to another;
- the data key is sealed ("wrapped") by a master key, named by its id in the row, with associated
  data naming the same row and the key id;
- master keys come from ``vault.master_key`` (e.g. ``WARDGATE_VAULT__MASTER_KEY="kid:base64,..."``,
  first one active) or a key file (default ``<home>/vault.keys``) that must be mode 0600.

Rotation (:meth:`Vault.rewrap_all`) re-wraps each row's data key under the active master key, one
row per transaction, leaving the ciphertext alone; old keys stay readable until retired. A running
gateway that meets a key id it does not hold re-reads the key file, so rotation needs no restart.

Nothing here logs, formats or raises with a plaintext; :class:`Secret` hides itself in ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .agents import check_name
from .errors import BadRequest, ConfigError, DependencyUnavailable, NotFound
from .settings import Settings
from .sqlite import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS credentials (
    tenant TEXT NOT NULL,
    user TEXT NOT NULL,
    service TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('secret', 'oauth')),
    key_id TEXT NOT NULL,
    wrapped_key BLOB NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (tenant, user, service)
);
"""

Kind = Literal["secret", "oauth"]
MAX_SECRET_BYTES = 64 * 1024
_NONCE = 12


def vault_unavailable(message: str) -> DependencyUnavailable:
    return DependencyUnavailable(message, code="vault_unavailable")


class Secret:
    """A plaintext that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = value

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class Credential:
    tenant: str
    user: str
    service: str
    kind: Kind
    secret: Secret
    updated_at: float


@dataclass(frozen=True, slots=True)
class MasterKeys:
    active: str
    keys: dict[str, bytes]

    def __repr__(self) -> str:
        return f"MasterKeys(active={self.active!r}, ids={sorted(self.keys)!r})"


def _decode_key(kid: str, text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"vault master key {kid!r} is not base64", code="vault_key_invalid") from None
    if len(key) != 32:
        raise ConfigError(f"vault master key {kid!r} must be 32 bytes (AES-256)", code="vault_key_invalid")
    return key


def parse_key_list(text: str) -> MasterKeys:
    """``"kid:base64,kid2:base64"`` (first active); a bare base64 key gets the id ``env``."""
    keys: dict[str, bytes] = {}
    order: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        kid, sep, value = part.partition(":")
        if not sep:
            kid, value = "env", part
        keys[kid] = _decode_key(kid, value)
        order.append(kid)
    if not order:
        raise ConfigError("vault master key is empty", code="vault_key_invalid")
    return MasterKeys(order[0], keys)


def read_key_file(path: Path) -> MasterKeys:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(
            f"no vault master key: {path} does not exist (`wardgate creds put` creates it)", code="vault_key_missing"
        ) from None
    if mode & 0o077:
        raise ConfigError(f"{path} is readable by others; chmod 600 it", code="vault_key_permissions")
    try:
        data = json.loads(path.read_text())
        keys = {str(kid): _decode_key(str(kid), value) for kid, value in data["keys"].items()}
        active = str(data["active"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"{path} is not a wardgate vault key file", code="vault_key_invalid") from None
    if active not in keys:
        raise ConfigError(f"{path}: active key {active!r} is missing", code="vault_key_invalid")
    return MasterKeys(active, keys)


def write_key_file(path: Path, keys: MasterKeys) -> None:
    """Atomically replace ``path`` (mode 0600 from the start, never looser)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = {"active": keys.active, "keys": {kid: base64.b64encode(k).decode() for kid, k in keys.keys.items()}}
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def new_master_key() -> tuple[str, bytes]:
    return f"mk-{secrets.token_hex(6)}", AESGCM.generate_key(bit_length=256)


class KeySource:
    """Where the master keys come from; re-read on demand (rotation by another process)."""

    def __init__(self, settings: Settings) -> None:
        self._inline = settings.vault.master_key
        self.path = settings.vault_key_file

    @property
    def is_file(self) -> bool:
        return self._inline is None

    def load(self) -> MasterKeys:
        if self._inline is not None:
            return parse_key_list(self._inline.get_secret_value())
        return read_key_file(self.path)

    def load_or_create(self) -> MasterKeys:
        """For ``creds put``: the first credential creates the key file."""
        if self._inline is None and not self.path.exists():
            kid, key = new_master_key()
            keys = MasterKeys(kid, {kid: key})
            write_key_file(self.path, keys)
        return self.load()


def _aad(purpose: bytes, *parts: str) -> bytes:
    # Names are checked to be [a-z0-9._-], so NUL cannot appear inside a part.
    return b"\0".join([purpose, *(p.encode() for p in parts)])


class Vault:
    """Synchronous vault over ``state.db``; async callers use ``asyncio.to_thread``."""

    def __init__(self, path: Path, source: KeySource, *, create_keys: bool = False) -> None:
        self._conn = connect(path, schema=SCHEMA, check_same_thread=False)
        # Only ever reads PRAGMA data_version (see version()); it never writes, so every commit,
        # including this process's own through _conn, changes what it reads.
        self._watch = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        self._watch.execute("PRAGMA busy_timeout=0")
        self._lock = threading.RLock()
        self._source = source
        self._create_keys = create_keys
        self._keys: MasterKeys | None = None

    def close(self) -> None:
        self._conn.close()
        self._watch.close()

    def version(self) -> int | None:
        """A number that changes whenever a transaction is committed to the state database by any
        connection, this process's or another's (CLI, admin API, another worker); None when it
        cannot be read right now.

        Cheap enough for the event loop (a few microseconds): SQLite answers it from the WAL index
        in shared memory, and with a busy timeout of zero it never waits for a lock; a busy or
        failing read is None, and the caller then reads the vault itself. Callers must use it
        from one thread. ``fetchall`` runs the statement to its end, so no read transaction stays
        open to hold back checkpoints.
        """
        try:
            return int(self._watch.execute("PRAGMA data_version").fetchall()[0][0])
        except sqlite3.Error:
            return None

    def _master(self, refresh: bool = False) -> MasterKeys:
        if self._keys is None or refresh:
            try:
                self._keys = self._source.load_or_create() if self._create_keys else self._source.load()
            except ConfigError as error:
                raise vault_unavailable(error.message) from None
        return self._keys

    def _key(self, kid: str) -> bytes:
        keys = self._master()
        if kid not in keys.keys:
            keys = self._master(refresh=True)  # rotated by another process since we loaded
        if kid not in keys.keys:
            raise vault_unavailable(f"vault master key {kid!r} is not available")
        return keys.keys[kid]

    @staticmethod
    def _check(tenant: str, user: str, service: str) -> None:
        check_name("tenant", tenant)
        check_name("service", service)
        if not user or len(user) > 256 or "\0" in user:
            raise BadRequest("user must be 1-256 characters", code="invalid_user")

    def put(self, tenant: str, user: str, service: str, kind: Kind, plaintext: bytes) -> None:
        self._check(tenant, user, service)
        if not plaintext or len(plaintext) > MAX_SECRET_BYTES:
            raise BadRequest("the secret must be 1 byte to 64 KiB", code="credential_invalid")
        with self._lock:
            keys = self._master()
            data_key = AESGCM.generate_key(bit_length=256)
            nonce = os.urandom(_NONCE)
            ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, _aad(b"wardgate-vault-v1", tenant, user, service, kind))
            wrapped = self._wrap(keys.active, keys.keys[keys.active], data_key, tenant, user, service)
            now = time.time()
            self._conn.execute(
                "INSERT INTO credentials (tenant, user, service, kind, key_id, wrapped_key, nonce, ciphertext,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (tenant, user, service) DO UPDATE SET kind = excluded.kind, key_id = excluded.key_id,"
                " wrapped_key = excluded.wrapped_key, nonce = excluded.nonce, ciphertext = excluded.ciphertext,"
                " updated_at = excluded.updated_at",
                (tenant, user, service, kind, keys.active, wrapped, nonce, ciphertext, now, now),
            )

    @staticmethod
    def _wrap(kid: str, master: bytes, data_key: bytes, tenant: str, user: str, service: str) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + AESGCM(master).encrypt(nonce, data_key, _aad(b"wardgate-vault-dek-v1", kid, tenant, user, service))

    @staticmethod
    def _unwrap(kid: str, master: bytes, wrapped: bytes, tenant: str, user: str, service: str) -> bytes:
        return AESGCM(master).decrypt(wrapped[:_NONCE], wrapped[_NONCE:], _aad(b"wardgate-vault-dek-v1", kid, tenant, user, service))

    def get(self, tenant: str, user: str, service: str) -> Credential | None:
        """The decrypted credential, None if there is none, ``vault_unavailable`` if it cannot be opened."""
        try:
            with self._lock:
                row = self._conn.execute(
                    "SELECT * FROM credentials WHERE tenant = ? AND user = ? AND service = ?", (tenant, user, service)
                ).fetchone()
        except sqlite3.Error:
            raise vault_unavailable("the credential store cannot be read") from None
        if row is None:
            return None
        try:
            data_key = self._unwrap(row["key_id"], self._key(row["key_id"]), row["wrapped_key"], tenant, user, service)
            plaintext = AESGCM(data_key).decrypt(
                row["nonce"], row["ciphertext"], _aad(b"wardgate-vault-v1", tenant, user, service, row["kind"])
            )
        except (InvalidTag, ValueError):
            # Wrong key, tampered row, or a row moved from another tenant/user/service.
            raise vault_unavailable(f"the stored credential for service {service!r} failed its integrity check") from None
        return Credential(tenant, user, service, row["kind"], Secret(plaintext), row["updated_at"])

    def list(self, tenant: str | None = None, user: str | None = None, service: str | None = None) -> list[dict[str, object]]:
        """Metadata only: never the ciphertext, never the plaintext."""
        clauses, params = [], []
        for column, value in (("tenant", tenant), ("user", user), ("service", service)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT tenant, user, service, kind, key_id, created_at, updated_at FROM credentials {where}"
                " ORDER BY tenant, user, service",
                params,
            ).fetchall()
        return [dict(row) for row in rows]

    def delete(self, tenant: str, user: str, service: str) -> None:
        with self._lock:
            cursor = self._conn.execute(
                "DELETE FROM credentials WHERE tenant = ? AND user = ? AND service = ?", (tenant, user, service)
            )
        if cursor.rowcount == 0:
            raise NotFound("no such credential", code="credential_not_found")

    def rewrap_all(self) -> int:
        """Re-wrap every data key not under the active master key; returns how many rows changed.

        One row per transaction, compare-and-set on the old key id, so readers always see a row
        that opens (with the old key or the new one) and a concurrent ``put`` is never undone.
        """
        keys = self._master(refresh=True)
        changed = 0
        with self._lock:
            rows = self._conn.execute(
                "SELECT tenant, user, service, key_id, wrapped_key FROM credentials WHERE key_id != ?", (keys.active,)
            ).fetchall()
        for row in rows:
            tenant, user, service, kid = row["tenant"], row["user"], row["service"], row["key_id"]
            try:
                data_key = self._unwrap(kid, self._key(kid), row["wrapped_key"], tenant, user, service)
            except InvalidTag:
                raise vault_unavailable(f"credential {tenant}/{user}/{service} failed its integrity check") from None
            wrapped = self._wrap(keys.active, keys.keys[keys.active], data_key, tenant, user, service)
            with self._lock:
                cursor = self._conn.execute(
                    "UPDATE credentials SET key_id = ?, wrapped_key = ? WHERE tenant = ? AND user = ? AND service = ?"
                    " AND key_id = ? AND wrapped_key = ?",
                    (keys.active, wrapped, tenant, user, service, kid, row["wrapped_key"]),
                )
            changed += cursor.rowcount
        return changed

    def key_ids_in_use(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._conn.execute("SELECT DISTINCT key_id FROM credentials")}
