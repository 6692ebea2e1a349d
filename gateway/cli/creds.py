"""``wardgate creds put|list|delete|rotate-master-key``.

Secrets are read from stdin or ``--file``, never from the command line (argv is visible to every
user of the machine through ``ps`` and lands in shell history).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import BadRequest, ConfigError
from ..settings import _hint
from ..vault import KeySource, MasterKeys, Vault, new_master_key, write_key_file
from ._context import CliContext, pass_cli, print_json, print_table

OAUTH_FIELDS = {"access_token", "refresh_token", "expires_at", "token_endpoint", "client_id", "client_secret", "scope"}


@click.group()
def creds() -> None:
    """Store users' credentials for services (encrypted at rest)."""


def _vault(cli: CliContext, create_keys: bool = False) -> Vault:
    settings = cli.settings()
    return Vault(settings.state_db, KeySource(settings), create_keys=create_keys)


def _read_secret(file: Path | None) -> bytes:
    if file is not None:
        data = file.read_bytes()
    else:
        if sys.stdin.isatty():
            click.echo("reading the secret from stdin (end with Ctrl-D)", err=True)
        data = sys.stdin.buffer.read()
    # One trailing newline is what `echo` and editors add; it is never part of a token.
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        raise BadRequest("the secret is empty", code="credential_invalid")
    return data


def check_oauth_grant(data: bytes) -> bytes:
    try:
        grant = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("an OAuth grant must be a JSON object", code="credential_invalid") from None
    if not isinstance(grant, dict) or not isinstance(grant.get("access_token"), str):
        raise BadRequest("an OAuth grant needs at least access_token", code="credential_invalid")
    unknown = set(grant) - OAUTH_FIELDS
    if unknown:
        raise BadRequest(f"unknown OAuth grant fields: {', '.join(sorted(unknown))}", code="credential_invalid")
    if grant.get("refresh_token") and not str(grant.get("token_endpoint", "")).startswith("https://"):
        raise BadRequest("a refreshable grant needs an https token_endpoint", code="credential_invalid")
    return json.dumps(grant, separators=(",", ":")).encode()


@creds.command("put")
@click.option("--tenant", required=True)
@click.option("--user", required=True)
@click.option("--service", required=True)
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Read the secret from this file instead of stdin.")
@click.option("--kind", type=click.Choice(["secret", "oauth"]), default="secret",
              help="secret: a token or user:password; oauth: a JSON grant (access_token, refresh_token, expires_at, "
                   "token_endpoint, client_id, client_secret).")
@pass_cli
def put(cli: CliContext, tenant: str, user: str, service: str, file: Path | None, kind: str) -> None:
    """Store the credential of USER in TENANT for SERVICE (secret on stdin or --file)."""
    services = cli.settings().services
    if service not in services:
        raise ConfigError(f"no service {service!r} is configured{_hint(service, list(services))}",
                          code="service_unknown")
    if services[service].mechanism == "assertion":
        raise BadRequest(f"service {service!r} uses signed assertions; it has no stored secret",
                         code="credential_not_needed")
    secret = _read_secret(file)
    if kind == "oauth":
        secret = check_oauth_grant(secret)
    vault = _vault(cli, create_keys=True)
    try:
        vault.put(tenant, user, service, kind, secret)  # type: ignore[arg-type]
    finally:
        vault.close()
    click.echo(f"stored {kind} for {tenant}/{user}/{service}")


@creds.command("list")
@click.option("--tenant")
@click.option("--user")
@click.option("--service")
@click.option("--json", "as_json", is_flag=True)
@pass_cli
def list_creds(cli: CliContext, tenant: str | None, user: str | None, service: str | None, as_json: bool) -> None:
    """Metadata of stored credentials (never their values)."""
    vault = _vault(cli)
    try:
        rows = vault.list(tenant, user, service)
    finally:
        vault.close()
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ["tenant", "user", "service", "kind", "key_id", "updated_at"])


@creds.command("delete")
@click.option("--tenant", required=True)
@click.option("--user", required=True)
@click.option("--service", required=True)
@pass_cli
def delete(cli: CliContext, tenant: str, user: str, service: str) -> None:
    vault = _vault(cli)
    try:
        vault.delete(tenant, user, service)
    finally:
        vault.close()
    click.echo(f"deleted {tenant}/{user}/{service}")


@creds.command("rotate-master-key")
@click.option("--retire-old", is_flag=True, help="Drop old master keys from the key file once nothing uses them.")
@pass_cli
def rotate_master_key(cli: CliContext, retire_old: bool) -> None:
    """Make a new master key active and re-wrap every credential under it, while the gateway runs.

    With an inline key (vault.master_key), put the new key first in the list yourself; this then
    re-wraps every record under it.
    """
    settings = cli.settings()
    source = KeySource(settings)
    if source.is_file:
        keys = source.load()
        kid, key = new_master_key()
        write_key_file(source.path, MasterKeys(kid, {**keys.keys, kid: key}))
    vault = _vault(cli)
    try:
        changed = vault.rewrap_all()
        active = source.load()
        click.echo(f"active master key {active.active}; re-wrapped {changed} credential(s)")
        if retire_old and source.is_file:
            in_use = vault.key_ids_in_use()
            kept = {k: v for k, v in active.keys.items() if k == active.active or k in in_use}
            write_key_file(source.path, MasterKeys(active.active, kept))
            click.echo(f"retired {len(active.keys) - len(kept)} old key(s)")
    finally:
        vault.close()


def _admin_call(base: str, token: str, method: str, path: str, body: dict[str, str] | None = None) -> dict[str, object]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{base}{path}", method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            detail = json.loads(error.read())["error"]
            raise BadRequest(detail["message"], code=detail["code"]) from None
        except (ValueError, KeyError, TypeError):
            raise BadRequest(f"admin API answered {error.code}", code="admin_api_error") from None
    except (urllib.error.URLError, OSError):
        raise ConfigError(f"the gateway's admin API at {base} is not reachable; is `wardgate up` running?",
                          code="gateway_not_running") from None


@creds.command("connect")
@click.option("--tenant", required=True)
@click.option("--user", required=True)
@click.option("--service", required=True)
@click.option("--timeout", default=300, show_default=True, help="Seconds to wait for the user to approve.")
@pass_cli
def connect(cli: CliContext, tenant: str, user: str, service: str, timeout: int) -> None:
    """Connect USER's account at SERVICE through OAuth (authorization code + PKCE).

    Needs a running gateway (its admin API serves the redirect back) and a service with an
    [services.NAME.oauth] section. Prints the URL to open, then waits for the approval.
    """
    import time

    settings = cli.settings()
    listeners = settings.run_dir / "listeners.json"
    if not listeners.exists():
        raise ConfigError("no running gateway found; start it with `wardgate up`", code="gateway_not_running")
    base = f"http://{json.loads(listeners.read_text())['admin']}"
    token = settings.admin_token.get_secret_value() if settings.admin_token else (settings.home / "admin.token").read_text().strip()
    started = _admin_call(base, token, "POST", "/v1/oauth/connect", {"tenant": tenant, "user": user, "service": service})
    click.echo("Open this URL to approve access:")
    click.echo(str(started["authorization_url"]), nl=True)
    sys.stdout.flush()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _admin_call(base, token, "GET", f"/v1/oauth/connect/{started['state']}")
        if state["status"] == "connected":
            click.echo(f"connected {service} for {tenant}/{user}")
            return
        if state["status"] == "failed":
            raise BadRequest(f"connecting {service} failed: {state['reason']}", code="oauth_connect_failed")
        time.sleep(0.5)
    raise BadRequest("timed out waiting for the approval", code="oauth_connect_timeout")
