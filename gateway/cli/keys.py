"""``wardgate keys rotate|revoke|list``: the gateway's signing keys."""

from __future__ import annotations

import click

from .. import keys as keyring
from . import _revoke
from ._context import CliContext, pass_cli, print_table


@click.group()
def keys() -> None:
    """Rotate and revoke the keys that sign agent tokens."""


@keys.command("list")
@pass_cli
def list_keys(cli: CliContext) -> None:
    ring = keyring.KeyRing.load(cli.settings().keys_dir)
    rows = [{"kid": kid, "alg": keyring.algorithm_for(key), "active": kid == ring.signing.kid}
            for kid, key in sorted(ring.public.items())]
    print_table(rows, ["kid", "alg", "active"])


@keys.command("rotate")
@pass_cli
def rotate(cli: CliContext) -> None:
    """Make a new key the signer; older keys keep verifying their tokens until they expire."""
    settings = cli.settings()
    answered = _revoke.call_gateway(settings, "POST", "/v1/keys/rotate", {})
    kid = answered["kid"] if answered is not None else keyring.rotate(settings.keys_dir)
    click.echo(f"new signing key {kid}")


# A kid is an RFC 7638 thumbprint in base64url and may start with "-": read it as the argument,
# not as an unknown option, and not as -h either (one kid in 4,096 starts with "-h"): only --help
# shows this command's help.
@keys.command("revoke", context_settings={"ignore_unknown_options": True, "help_option_names": ["--help"]})
@click.argument("kid")
@click.option("--reason", default="", help="Why (kept in the audit record).")
@pass_cli
def revoke(cli: CliContext, kid: str, reason: str) -> None:
    """Every token signed by KID stops working at once; the key leaves the JWKS."""
    settings = cli.settings()
    body = {"kind": "key", "subject": kid, "reason": reason, "actor": _revoke.actor()}
    answered = _revoke.call_gateway(settings, "POST", "/v1/revocations", body)
    if answered is None:
        keyring.retire(settings.keys_dir, kid)
        revocation, live = _revoke.revoke(settings, "key", kid, reason)
    else:
        revocation, live = answered, True
    click.echo(_revoke.describe(revocation, live))
