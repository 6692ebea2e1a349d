"""The vault: envelope encryption, row binding, key files, rotation; the CLI that feeds it."""

from __future__ import annotations

import base64
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from wardgate.gateway.errors import ConfigError, DependencyUnavailable
from wardgate.gateway.settings import load_settings
from wardgate.gateway.vault import KeySource, Vault, parse_key_list, read_key_file

SECRET = b"ghp_canary_0123456789abcdef"
CONFIG = 'version = 1\n[services.github]\nhosts = ["api.github.com"]\n[services.internal]\nhosts = ["*.corp"]\nmechanism = "assertion"\n'


def make_vault(tmp_path: Path, *, env_key: str | None = None, create: bool = True) -> Vault:
    environ = {"WARDGATE_HOME": str(tmp_path / "home")}
    if env_key:
        environ["WARDGATE_VAULT__MASTER_KEY"] = env_key
    settings = load_settings(environ=environ, cwd=tmp_path)
    return Vault(settings.state_db, KeySource(settings), create_keys=create)


def test_round_trip_and_no_plaintext_at_rest(tmp_path: Path) -> None:
    vault = make_vault(tmp_path)
    vault.put("acme", "alice", "github", "secret", SECRET)
    got = vault.get("acme", "alice", "github")
    assert got is not None and got.secret.reveal() == SECRET and got.kind == "secret"
    assert SECRET.decode() not in repr(got)
    assert vault.get("acme", "bob", "github") is None
    vault.close()
    for path in (tmp_path / "home").iterdir():
        assert SECRET not in path.read_bytes(), path
    assert oct((tmp_path / "home" / "vault.keys").stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    "column_swap",
    [("user", "bob"), ("service", "gitlab"), ("tenant", "other")],
)
def test_a_row_moved_to_another_owner_does_not_open(tmp_path: Path, column_swap: tuple[str, str]) -> None:
    vault = make_vault(tmp_path)
    vault.put("acme", "alice", "github", "secret", SECRET)
    column, value = column_swap
    db = sqlite3.connect(tmp_path / "home" / "state.db")
    db.execute(f"UPDATE credentials SET {column} = ?", (value,))
    db.commit()
    db.close()
    owner = {"tenant": "acme", "user": "alice", "service": "github", column: value}
    with pytest.raises(DependencyUnavailable) as caught:
        vault.get(owner["tenant"], owner["user"], owner["service"])
    assert caught.value.code == "vault_unavailable"


def test_ciphertexts_swapped_between_rows_do_not_open(tmp_path: Path) -> None:
    vault = make_vault(tmp_path)
    vault.put("acme", "alice", "github", "secret", b"alice-token-aaaaaaaa")
    vault.put("acme", "bob", "github", "secret", b"bob-token-bbbbbbbbbb")
    db = sqlite3.connect(tmp_path / "home" / "state.db")
    rows = {r[0]: r[1:] for r in db.execute("SELECT user, wrapped_key, nonce, ciphertext FROM credentials")}
    db.execute("UPDATE credentials SET wrapped_key = ?, nonce = ?, ciphertext = ? WHERE user = 'bob'", rows["alice"])
    db.commit()
    db.close()
    with pytest.raises(DependencyUnavailable):
        vault.get("acme", "bob", "github")


def test_key_file_with_loose_permissions_is_refused(tmp_path: Path) -> None:
    vault = make_vault(tmp_path)
    vault.put("acme", "alice", "github", "secret", SECRET)
    vault.close()
    key_file = tmp_path / "home" / "vault.keys"
    key_file.chmod(0o640)
    with pytest.raises(ConfigError) as caught:
        read_key_file(key_file)
    assert caught.value.code == "vault_key_permissions"
    with pytest.raises(DependencyUnavailable) as unavailable:
        make_vault(tmp_path, create=False).get("acme", "alice", "github")
    assert unavailable.value.code == "vault_unavailable"


def test_key_from_environment(tmp_path: Path) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    vault = make_vault(tmp_path, env_key=f"k1:{key}")
    vault.put("acme", "alice", "github", "secret", SECRET)
    assert not (tmp_path / "home" / "vault.keys").exists()
    assert vault.get("acme", "alice", "github").secret.reveal() == SECRET  # type: ignore[union-attr]
    other = base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(DependencyUnavailable):  # a different key with the same id cannot open it
        make_vault(tmp_path, env_key=f"k1:{other}").get("acme", "alice", "github")
    assert make_vault(tmp_path, env_key=f"k2:{other},k1:{key}").rewrap_all() == 1
    assert make_vault(tmp_path, env_key=f"k2:{other}").get("acme", "alice", "github").secret.reveal() == SECRET  # type: ignore[union-attr]


@pytest.mark.parametrize("text", ["", "k1:notbase64!", "k1:" + base64.b64encode(b"short").decode()])
def test_bad_inline_keys_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_key_list(text)


def wardgate(tmp_path: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "WARDGATE_HOME": str(tmp_path / "home")}
    env.pop("WARDGATE_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "wardgate.gateway.cli", "--config", str(tmp_path / "wardgate.toml"), *args],
        input=stdin, capture_output=True, env=env, cwd=tmp_path, timeout=60,
    )


def test_cli_put_list_rotate_delete(tmp_path: Path) -> None:
    (tmp_path / "wardgate.toml").write_text(CONFIG)
    owner = ["--tenant", "acme", "--user", "alice", "--service", "github"]
    done = wardgate(tmp_path, "creds", "put", *owner, stdin=SECRET + b"\n")
    assert done.returncode == 0, done.stderr
    secret_file = tmp_path / "bob.secret"
    secret_file.write_bytes(b"bob-secret-value-1234")
    assert wardgate(tmp_path, "creds", "put", "--tenant", "acme", "--user", "bob", "--service", "github",
                    "--file", str(secret_file)).returncode == 0
    listed = wardgate(tmp_path, "creds", "list")
    assert b"alice" in listed.stdout and b"bob" in listed.stdout and SECRET not in listed.stdout
    misspelt = wardgate(tmp_path, "creds", "put", "--tenant", "acme", "--user", "alice", "--service", "githb", stdin=SECRET)
    assert misspelt.returncode == 2 and b"did you mean 'github'" in misspelt.stderr
    assertion = wardgate(tmp_path, "creds", "put", "--tenant", "acme", "--user", "alice", "--service", "internal", stdin=SECRET)
    assert b"credential_not_needed" in assertion.stderr
    # A reader that loaded the keys before rotation keeps working: it re-reads the key file.
    settings = load_settings(config_file=tmp_path / "wardgate.toml", environ={"WARDGATE_HOME": str(tmp_path / "home")})
    reader = Vault(settings.state_db, KeySource(settings))
    assert reader.get("acme", "alice", "github").secret.reveal() == SECRET  # type: ignore[union-attr]
    before = read_key_file(settings.vault_key_file)
    rotated = wardgate(tmp_path, "creds", "rotate-master-key", "--retire-old")
    assert rotated.returncode == 0, rotated.stderr
    assert b"re-wrapped 2 credential(s)" in rotated.stdout
    after = read_key_file(settings.vault_key_file)
    assert after.active != before.active and before.active not in after.keys
    assert reader.get("acme", "alice", "github").secret.reveal() == SECRET  # type: ignore[union-attr]
    assert reader.get("acme", "bob", "github").secret.reveal() == b"bob-secret-value-1234"  # type: ignore[union-attr]
    assert wardgate(tmp_path, "creds", "delete", *owner).returncode == 0
    again = wardgate(tmp_path, "creds", "delete", *owner)
    assert again.returncode == 2 and b"credential_not_found" in again.stderr
    assert reader.get("acme", "alice", "github") is None
