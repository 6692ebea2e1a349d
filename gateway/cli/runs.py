"""``wardgate runs revoke``: the kill switch for one runaway run."""

from __future__ import annotations

import click

from . import _revoke
from ._context import CliContext, pass_cli


@click.group()
def runs() -> None:
    """Durable runs."""


@runs.command("revoke")
@click.argument("run_id")
@click.option("--reason", default="", help="Why (kept in the audit record).")
@pass_cli
def revoke(cli: CliContext, run_id: str, reason: str) -> None:
    """Refuse every token carrying RUN_ID, on every replica; the agent's other work goes on."""
    revocation, live = _revoke.revoke(cli.settings(), "run", run_id, reason)
    click.echo(_revoke.describe(revocation, live))
