"""``wardgate agents create|list|show|revoke|disable|enable``."""

from __future__ import annotations

import asyncio

import click

from ..agents import AgentRegistry
from . import _revoke
from ._context import CliContext, pass_cli, print_json, print_table


@click.group()
def agents() -> None:
    """Register and inspect agents."""


@agents.command("create")
@click.argument("name")
@click.option("--tenant", required=True)
@click.option("--scope", "scopes", multiple=True, help="Allowed scope; repeat for several.")
@click.option("--owner", default="", help="Who is responsible for this agent.")
@pass_cli
def create(cli: CliContext, name: str, tenant: str, scopes: tuple[str, ...], owner: str) -> None:
    """Register agent NAME in TENANT."""
    registry = AgentRegistry(cli.settings().state_db)
    agent = registry.create(name, tenant, list(scopes), owner)
    click.echo(f"created agent {agent.name} (tenant {agent.tenant}, scopes {' '.join(agent.scopes) or '-'})")


@agents.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_cli
def list_agents(cli: CliContext, as_json: bool) -> None:
    rows = [a.as_dict() for a in AgentRegistry(cli.settings().state_db).list()]
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ["name", "tenant", "status", "scopes", "owner"])


@agents.command("show")
@click.argument("name")
@pass_cli
def show(cli: CliContext, name: str) -> None:
    print_json(AgentRegistry(cli.settings().state_db).get(name).as_dict())


@agents.command("revoke")
@click.argument("name")
@click.option("--reason", default="", help="Why (kept in the audit record).")
@pass_cli
def revoke(cli: CliContext, name: str, reason: str) -> None:
    """Refuse every token NAME was issued until now; tokens minted afterwards work."""
    settings = cli.settings()
    AgentRegistry(settings.state_db).get(name)  # an unknown agent is an error, not a silent no-op
    revocation, live = _revoke.revoke(settings, "agent", name, reason)
    click.echo(_revoke.describe(revocation, live))


def _set_status(cli: CliContext, name: str, action: str, reason: str) -> None:
    settings = cli.settings()
    body = {"reason": reason, "actor": _revoke.actor()}
    answered = _revoke.call_gateway(settings, "POST", f"/v1/agents/{name}/{action}", body)
    if answered is None:
        AgentRegistry(settings.state_db).set_status(name, "disabled" if action == "disable" else "active")
        asyncio.run(_revoke.record_locally(settings, action.upper(), "agent", name, reason))
    click.echo(f"agent {name} {action}d")


@agents.command("disable")
@click.argument("name")
@click.option("--reason", default="", help="Why (kept in the audit record).")
@pass_cli
def disable(cli: CliContext, name: str, reason: str) -> None:
    """Refuse all of NAME's tokens, old and new, until `agents enable`."""
    _set_status(cli, name, "disable", reason)


@agents.command("enable")
@click.argument("name")
@click.option("--reason", default="", help="Why (kept in the audit record).")
@pass_cli
def enable(cli: CliContext, name: str, reason: str) -> None:
    """Accept NAME's tokens again (tokens revoked by `agents revoke` stay revoked)."""
    _set_status(cli, name, "enable", reason)
