"""Cached credentials: read once while the vault is unchanged, never used after a write commits."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from wardgate.gateway.assertion import AssertionMinter
from wardgate.gateway.bindings import Bindings
from wardgate.gateway.credential_cache import CredentialCache, Entry
from wardgate.gateway.credentials import Caller, CredentialProvider
from wardgate.gateway.errors import PolicyDenied
from wardgate.gateway.keys import KeyRing
from wardgate.gateway.settings import ServiceSettings, load_settings
from wardgate.gateway.vault import KeySource, Vault

CALLER = Caller("acme", "alice", "bot", None, "call-1")


class CountingVault(Vault):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.reads = 0

    def get(self, tenant: str, user: str, service: str):  # noqa: ANN201
        self.reads += 1
        return super().get(tenant, user, service)


def open_vaults(tmp_path: Path) -> tuple[CountingVault, Vault]:
    """The gateway's vault and a second one on the same file, standing in for the CLI."""
    settings = load_settings(environ={"WARDGATE_HOME": str(tmp_path / "home")}, cwd=tmp_path)
    return (CountingVault(settings.state_db, KeySource(settings), create_keys=True),
            Vault(settings.state_db, KeySource(settings), create_keys=True))


def provider_for(vault: Vault, tmp_path: Path) -> tuple[CredentialProvider, Bindings]:
    bindings = Bindings({"github": ServiceSettings(hosts=["api.github.com"])})
    minter = AssertionMinter(KeyRing.load(tmp_path / "keys"), "wardgate")
    return CredentialProvider(vault, None, minter), bindings


def header(provider: CredentialProvider, bindings: Bindings) -> str:
    binding = bindings.get("github")
    assert binding is not None
    return asyncio.run(provider.credential_for(binding, CALLER)).header_value


def test_the_vault_is_read_once_until_any_connection_writes(tmp_path: Path) -> None:
    vault, cli = open_vaults(tmp_path)
    cli.put("acme", "alice", "github", "secret", b"first-0123456789")
    provider, bindings = provider_for(vault, tmp_path)
    assert header(provider, bindings) == "Bearer first-0123456789"
    assert header(provider, bindings) == "Bearer first-0123456789"
    assert vault.reads == 1
    cli.put("acme", "alice", "github", "secret", b"second-0123456789")  # rotated by another connection
    assert header(provider, bindings) == "Bearer second-0123456789"
    cli.delete("acme", "alice", "github")  # deleted: the very next call has no credential
    with pytest.raises(PolicyDenied) as caught:
        header(provider, bindings)
    assert caught.value.code == "credential_missing"
    vault.put("acme", "alice", "github", "secret", b"third-0123456789")  # a write through the same vault
    assert header(provider, bindings) == "Bearer third-0123456789"
    assert vault.reads == 4


def test_a_raw_sql_write_is_seen_too(tmp_path: Path) -> None:
    vault, cli = open_vaults(tmp_path)
    cli.put("acme", "alice", "github", "secret", b"first-0123456789")
    provider, bindings = provider_for(vault, tmp_path)
    assert header(provider, bindings) == "Bearer first-0123456789"
    db = sqlite3.connect(tmp_path / "home" / "state.db")
    db.execute("DELETE FROM credentials")
    db.commit()
    db.close()
    with pytest.raises(PolicyDenied):
        header(provider, bindings)


def test_an_entry_read_under_an_older_version_is_not_kept() -> None:
    cache = CredentialCache()
    key = ("acme", "alice", "github")
    assert cache.lookup(1, key) is None
    assert cache.lookup(2, key) is None  # another call saw the vault change while the first read
    cache.store(1, key, Entry(None))
    assert cache.lookup(2, key) is None and len(cache) == 0
    cache.store(2, key, Entry(None))
    assert cache.lookup(2, key) is not None
    assert cache.lookup(3, key) is None and len(cache) == 0  # a new version drops every entry


def test_the_cache_is_bounded() -> None:
    cache = CredentialCache(max_entries=3)
    cache.lookup(1, ("t", "u", "s"))
    for index in range(5):
        cache.store(1, ("t", f"user{index}", "s"), Entry(None))
    assert len(cache) == 3
    assert cache.lookup(1, ("t", "user0", "s")) is None and cache.lookup(1, ("t", "user4", "s")) is not None
