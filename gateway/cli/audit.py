"""``wardgate audit query``."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import click

from ..audit import AuditQuery, query_records
from ..errors import BadRequest
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
