"""The ``wardgate`` command: one click group, one module per subcommand.

Shared options live here: ``--config`` (else ``$WARDGATE_CONFIG`` or ./wardgate.toml) and
``--home`` (else ``$WARDGATE_HOME`` or ./.wardgate). Every subcommand honours both. Errors are
printed as ``error[code]: message`` with exit status 2, never as a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import WardgateError
from ._context import CliContext
from .agents import agents
from .approvals import approvals
from .audit import audit
from .ca import ca
from .creds import creds
from .demo import demo
from .keys import keys
from .policy import policy
from .runs import runs
from .tokens import tokens
from .up import up


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="Config file (default ./wardgate.toml).")
@click.option("--home", type=click.Path(path_type=Path), help="State folder (default ./.wardgate).")
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None, home: Path | None) -> None:
    """wardgate: the authenticating egress proxy and tool gateway for AI agents."""
    ctx.obj = CliContext(config_file=config_file, home=home)


for command in (up, ca, agents, tokens, policy, audit, demo, keys, runs, creds):
    cli.add_command(command)
cli.add_command(approvals)
cli.add_command(runs)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except WardgateError as error:
        click.echo(f"error[{error.code}]: {error.message}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
