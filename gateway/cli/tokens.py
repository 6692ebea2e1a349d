"""``wardgate tokens mint|revoke``."""

from __future__ import annotations

import click

from ..agents import AgentRegistry
from ..errors import BadRequest, IdentityError
from ..identity import TokenIssuer
from ..keys import KeyRing
from ..settings import parse_duration
from . import _revoke
from ._context import CliContext, pass_cli


@click.group()
def tokens() -> None:
    """Mint and revoke identity tokens for agents."""


@tokens.command("mint")
@click.option("--agent", required=True)
@click.option("--user", required=True, help="The user on whose behalf the agent acts.")
@click.option("--ttl", default=None, help="Lifetime, e.g. 15m (capped by identity.max_ttl).")
@click.option("--scope", "scopes", multiple=True, help="Narrow to these scopes (default: all the agent has).")
@click.option("--run", "run_id", default=None, help="Durable run id to bind the token to.")
@pass_cli
def mint(cli: CliContext, agent: str, user: str, ttl: str | None, scopes: tuple[str, ...], run_id: str | None) -> None:
    """Print a signed token for AGENT acting for USER."""
    settings = cli.settings()
    record = AgentRegistry(settings.state_db).get(agent)
    if record.status != "active":
        raise IdentityError(f"agent {agent!r} is {record.status}", code="agent_not_active")
    chosen = tuple(sorted(set(scopes))) if scopes else record.scopes
    extra = set(chosen) - set(record.scopes)
    if extra:
        raise BadRequest(f"agent {agent!r} is not allowed scopes {sorted(extra)}", code="scope_not_allowed")
    try:
        lifetime = parse_duration(ttl) if ttl else None
    except ValueError as exc:
        raise BadRequest(str(exc), code="invalid_ttl") from None
    issuer = TokenIssuer(KeyRing.load(settings.keys_dir), settings.identity)
    click.echo(issuer.mint(agent=agent, tenant=record.tenant, user=user, scopes=chosen, ttl=lifetime, run=run_id))


@tokens.command("revoke")
@click.argument("jti")
@click.option("--reason", default="", help="Why (kept in the audit record).")
@pass_cli
def revoke(cli: CliContext, jti: str, reason: str) -> None:
    """Refuse the token whose id (jti claim) is JTI, on every replica."""
    revocation, live = _revoke.revoke(cli.settings(), "token", jti, reason)
    click.echo(_revoke.describe(revocation, live))
