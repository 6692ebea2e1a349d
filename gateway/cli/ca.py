"""``wardgate ca path``."""

from __future__ import annotations

import click

from ..ca import ensure_ca
from ._context import CliContext, pass_cli


@click.group()
def ca() -> None:
    """The interception CA that agents must trust."""


@ca.command("path")
@pass_cli
def path(cli: CliContext) -> None:
    """Print the path of the CA certificate (PEM) to trust: SSL_CERT_FILE, REQUESTS_CA_BUNDLE, NODE_EXTRA_CA_CERTS."""
    click.echo(str(ensure_ca(cli.settings().ca_dir)))
