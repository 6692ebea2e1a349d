"""``wardgate runs list|show|cancel|revoke``: durable runs.

``list``, ``show`` and ``cancel`` read the SDK's checkpoint store; ``revoke`` is the kill switch for
one runaway run: every token carrying its id is refused on every replica.

``--store`` names the store the agents use (``sqlite:///path/runs.db`` or ``postgresql://...``);
the default is ``runs.db`` in the state folder.
"""

from __future__ import annotations

import datetime
import time

import click

from wardgate.sdk.stores import STATUSES, CheckpointStore, create

from ..errors import Conflict, NotFound
from . import _revoke
from ._context import CliContext, pass_cli, print_json, print_table

store_option = click.option("--store", "store_url", default=None,
                            help="Checkpoint store URL (default sqlite:///<home>/runs.db).")


def _store(cli: CliContext, url: str | None) -> CheckpointStore:
    return create(url or f"sqlite:///{cli.settings().home / 'runs.db'}")


def _when(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.datetime.fromtimestamp(value, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@click.group()
def runs() -> None:
    """Durable agent runs."""


@runs.command("list")
@store_option
@click.option("--status", type=click.Choice(STATUSES), default=None)
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_cli
def list_runs(cli: CliContext, store_url: str | None, status: str | None, limit: int, as_json: bool) -> None:
    rows = [r.as_dict() for r in _store(cli, store_url).list(status=status, limit=limit)]
    if as_json:
        print_json(rows)
        return
    for row in rows:
        row["updated"] = _when(row["updated"])
    print_table(rows, ["id", "status", "steps", "owner", "updated"])


@runs.command("show")
@click.argument("run_id")
@store_option
@pass_cli
def show_run(cli: CliContext, run_id: str, store_url: str | None) -> None:
    """A run and its recorded steps, as JSON."""
    store = _store(cli, store_url)
    found = store.get(run_id)
    if found is None:
        raise NotFound(f"no run {run_id!r} in the checkpoint store", code="run_not_found")
    print_json({**found.as_dict(), "steps_recorded": [s.as_dict() for s in store.steps(run_id)]})


@runs.command("cancel")
@click.argument("run_id")
@store_option
@pass_cli
def cancel_run(cli: CliContext, run_id: str, store_url: str | None) -> None:
    """Cancel RUN_ID: its next checkpoint is refused and it cannot be resumed."""
    store = _store(cli, store_url)
    found = store.get(run_id)
    if found is None:
        raise NotFound(f"no run {run_id!r} in the checkpoint store", code="run_not_found")
    if not store.cancel(run_id, time.time()):
        raise Conflict(f"run {run_id!r} is {found.status}; only running or failed runs can be cancelled",
                       code="run_not_cancellable")
    click.echo(f"cancelled run {run_id}")


@runs.command("revoke")
@click.argument("run_id")
@click.option("--reason", default="", help="Why (kept in the audit record).")
@pass_cli
def revoke(cli: CliContext, run_id: str, reason: str) -> None:
    """Refuse every token carrying RUN_ID, on every replica; the agent's other work goes on."""
    revocation, live = _revoke.revoke(cli.settings(), "run", run_id, reason)
    click.echo(_revoke.describe(revocation, live))
