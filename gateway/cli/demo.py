"""``wardgate demo``."""

from __future__ import annotations

from pathlib import Path

import click

from ..demo import run_demo
from ._context import CliContext, pass_cli


@click.command()
@pass_cli
def demo(cli: CliContext) -> None:
    """An allowed, a denied and an unauthenticated call through a real gateway, and their audit trail."""
    settings = cli.settings()
    run_demo(click.echo, settings.opa.paths[0] if settings.opa.paths else Path("policies"))
