"""``wardgate approvals list|approve|deny``: decide calls the policy parked for a human."""

from __future__ import annotations

import getpass
import time

import click

from ..approvals import ApprovalStore
from ._context import CliContext, pass_cli, print_json, print_table

STATES = ["pending", "approved", "denied", "released", "expired"]


def _store(cli: CliContext) -> ApprovalStore:
    return ApprovalStore(cli.settings().home / "approvals.db")


@click.group()
def approvals() -> None:
    """List and decide pending approvals (policy obligation require_approval)."""


@approvals.command("list")
@click.option("--state", type=click.Choice(STATES), default=None, help="Only approvals in this state.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_cli
def list_approvals(cli: CliContext, state: str | None, limit: int, as_json: bool) -> None:
    rows = _store(cli).list(state, limit)
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ["id", "state", "agent", "user", "run", "step", "method", "host", "path"])


def _decide(cli: CliContext, approval_id: str, approve: bool, note: str | None) -> None:
    decided = _store(cli).decide(approval_id, approve, getpass.getuser(), note, time.time())
    click.echo(f"{decided['state']} {approval_id}: {decided['method']} {decided['host']}{decided['path']}"
               f" for agent {decided['agent']} (user {decided['user']})")


@approvals.command("approve")
@click.argument("approval_id")
@click.option("--note", default=None, help="Why; stored with the decision.")
@pass_cli
def approve(cli: CliContext, approval_id: str, note: str | None) -> None:
    """Approve APPROVAL_ID: the next identical request is forwarded, once."""
    _decide(cli, approval_id, True, note)


@approvals.command("deny")
@click.argument("approval_id")
@click.option("--note", default=None, help="Why; stored with the decision.")
@pass_cli
def deny(cli: CliContext, approval_id: str, note: str | None) -> None:
    """Deny APPROVAL_ID: the agent gets 403 approval_denied."""
    _decide(cli, approval_id, False, note)
