"""``wardgate audit query``."""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import click

from ..audit import AuditQuery, query_records
from ..audit_checkpoint import read_sink_file
from ..audit_keys import load_public_keys
from ..audit_setup import keys_dir
from ..audit_verify import render, verify_sqlite
from ..errors import BadRequest, NotFound
from ..settings import parse_duration
from ._context import CliContext, pass_cli, print_json, print_table

COLUMNS = ["time", "call_id", "kind", "agent", "user", "method", "host", "path", "decision", "status", "error"]


@click.group()
def audit() -> None:
    """Query the audit log."""


@audit.command("query")
@click.option("--agent")
@click.option("--user")
@click.option("--tenant")
@click.option("--host")
@click.option("--call", "call_id", help="One call's records (the X-Wardgate-Audit-Id).")
@click.option("--since", help="Only records newer than this, e.g. 2h.")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_cli
def query(cli: CliContext, agent, user, tenant, host, call_id, since, limit: int, as_json: bool) -> None:  # noqa: ANN001
    """Newest records first."""
    try:
        since_ts = time.time() - parse_duration(since) if since else None
    except ValueError as exc:
        raise BadRequest(str(exc), code="invalid_since") from None
    records = query_records(
        cli.settings().audit_db,
        AuditQuery(agent=agent, user=user, tenant=tenant, host=host, call_id=call_id, since=since_ts, limit=limit),
    )
    if as_json:
        print_json(records)
        return
    for record in records:
        record["time"] = datetime.fromtimestamp(record["time"], tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    print_table(records, COLUMNS)


@audit.command("verify")
@click.option("--public-key", "public_keys", multiple=True, type=click.Path(path_type=Path),
              help="Trusted checkpoint public key (.pub file or folder); default: the gateway's audit-keys folder.")
@click.option("--sink", type=click.Path(path_type=Path),
              help="External checkpoint file to check against (default: audit.checkpoint_sink_file).")
@click.option("--json", "as_json", is_flag=True)
@pass_cli
def verify_command(cli: CliContext, public_keys: tuple[Path, ...], sink: Path | None, as_json: bool) -> None:
    """Check every writer's hash chain against its signed checkpoints. Exit 1 on any invalid finding."""
    settings = cli.settings()
    if not settings.audit_db.exists():
        raise NotFound(f"no audit store at {settings.audit_db}", code="audit_store_missing")
    keys = load_public_keys(list(public_keys) or [keys_dir(settings)])
    sink = sink or settings.audit.checkpoint_sink_file
    external = None
    if sink is not None:
        external, unreadable = read_sink_file(sink)
        if unreadable:
            click.echo(f"warning: {unreadable} unreadable line(s) in {sink}", err=True)
    report = verify_sqlite(settings.audit_db, keys, external)
    if as_json:
        print_json(report.as_dict())
    else:
        click.echo(render(report))
    sys.exit(0 if report.valid else 1)
