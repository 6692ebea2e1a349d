"""``wardgate agents create|list|show``."""

from __future__ import annotations

import click

from ..agents import AgentRegistry
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
