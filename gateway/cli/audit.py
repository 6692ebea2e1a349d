"""``wardgate audit query|tail|export|verify|prune|usage``."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from ..audit import AuditQuery, query_records
from ..audit_checkpoint import CheckpointSink, read_sink_file
from ..audit_filters import parse_when, query_from
from ..audit_keys import load_or_create_signer, load_public_keys
from ..audit_prune import prune as prune_store
from ..audit_setup import audit_source, keys_dir
from ..audit_store import store_exists
from ..audit_usage import usage_report
from ..audit_verify import render, verify_store
from ..errors import NotFound
from ..ids import first_id_at
from ._context import CliContext, pass_cli, print_json, print_table

# How far back each `tail -f` poll looks for records committed late (well over audit.commit_timeout).
TAIL_LOOKBACK = 10.0
COLUMNS = ["time", "call_id", "kind", "agent", "user", "method", "host", "path", "decision", "status", "error"]
FORMATS = ["table", "json", "jsonl", "csv"]


@click.group()
def audit() -> None:
    """Query, follow, export, verify and prune the audit log."""


def filter_options(command):  # noqa: ANN001, ANN201
    """The filters every reading subcommand shares (same names as the admin API's parameters)."""
    for name, help_text in reversed([
        ("agent", None), ("user", None), ("tenant", None), ("run", None), ("host", None),
        ("method", None), ("decision", "allow or deny (error: a dependency was down)."),
        ("status", "Upstream or refusal HTTP status."), ("kind", "intent, outcome or refusal."),
        ("call", "One call's records (the X-Wardgate-Audit-Id)."), ("path", "Text the path contains."),
        ("since", "Newer than this: 2h, 7d, 2026-11-27, 2026-11-27T08:00:00Z."), ("until", "Older than this."),
    ]):
        command = click.option(f"--{name}", help=help_text)(command)
    return command


def _query(filters: dict[str, Any], limit: int) -> AuditQuery:
    filters = dict(filters)
    filters["call_id"] = filters.pop("call", None)
    filters["limit"] = str(limit)
    return query_from(filters)


def _human(record: dict[str, Any]) -> dict[str, Any]:
    shown = dict(record)
    shown["time"] = datetime.fromtimestamp(record["time"], tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return shown


def emit(records: list[dict[str, Any]], fmt: str, *, header: bool = True) -> None:
    if fmt == "json":
        print_json(records)
    elif fmt == "jsonl":
        for record in records:
            click.echo(json.dumps(record, sort_keys=True, separators=(",", ":")))
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(records[0]) if records else COLUMNS, extrasaction="ignore")
        if header:
            writer.writeheader()
        for record in records:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in record.items()})
        click.echo(buffer.getvalue(), nl=False)
    else:
        print_table([_human(r) for r in records], COLUMNS)


@audit.command("query")
@filter_options
@click.option("--limit", default=50, show_default=True)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@pass_cli
def query(cli: CliContext, limit: int, fmt: str, as_json: bool, **filters: Any) -> None:
    """Newest records first."""
    records = query_records(audit_source(cli.settings()), _query(filters, limit))
    emit(records, "json" if as_json else fmt)


@audit.command("tail")
@filter_options
@click.option("-n", "--lines", default=10, show_default=True, help="Records shown before following.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new records as they are committed.")
@click.option("--interval", default=0.5, show_default=True, help="Seconds between polls when following.")
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl"]), default="jsonl", show_default=True)
@pass_cli
def tail(cli: CliContext, lines: int, follow: bool, interval: float, fmt: str, **filters: Any) -> None:
    """The latest records, oldest first; with -f, then every new one (Ctrl-C stops)."""
    path = audit_source(cli.settings())
    base = _query(filters, max(lines, 1))
    records = list(reversed(query_records(path, base)))
    _print_rows(records, fmt)
    # Ids order records by creation time, but a record can be committed after a later-made one
    # (another writer, the same millisecond, a group commit): so each poll looks back over a
    # window and prints only what it has not printed yet.
    newest = max((r["time"] for r in records), default=time.time())
    # What already exists counts as seen: `-n` chose how much of it to show.
    window = replace(base, oldest_first=True, limit=10000)
    printed = {r["id"] for r in records} | {
        r["id"] for r in query_records(path, replace(window, after=first_id_at(newest - TAIL_LOOKBACK)))
    }
    while follow:
        time.sleep(interval)
        floor = first_id_at(newest - TAIL_LOOKBACK)
        fresh = [r for r in query_records(path, replace(window, after=floor)) if r["id"] not in printed]
        # Ids made in the same millisecond are in random order; creation time and each writer's
        # sequence are not.
        fresh.sort(key=lambda r: (r["time"], r["writer"], r["seq"]))
        if fresh:
            _print_rows(fresh, fmt)
            printed.update(r["id"] for r in fresh)
            newest = max(newest, *(r["time"] for r in fresh))
            printed = {i for i in printed if i >= floor}


def _print_rows(records: list[dict[str, Any]], fmt: str) -> None:
    for record in records:
        if fmt == "jsonl":
            click.echo(json.dumps(record, sort_keys=True, separators=(",", ":")))
        else:
            shown = _human(record)
            click.echo("  ".join(str(shown.get(c) if shown.get(c) is not None else "-") for c in COLUMNS))
    sys.stdout.flush()


@audit.command("export")
@filter_options
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Write here instead of stdout.")
@pass_cli
def export(cli: CliContext, output: Path | None, **filters: Any) -> None:
    """Every matching record, oldest first, as JSON Lines (one object per line) for a SIEM."""
    path = audit_source(cli.settings())
    base = replace(_query(filters, 1000), oldest_first=True)
    handle = open(output, "w") if output else None  # noqa: SIM115
    count, after = 0, None
    try:
        while True:
            page = query_records(path, replace(base, after=after))
            for record in page:
                line = json.dumps(record, sort_keys=True, separators=(",", ":"))
                if handle:
                    handle.write(line + "\n")
                else:
                    click.echo(line)
            count += len(page)
            if len(page) < base.limit:
                break
            after = page[-1]["id"]
    finally:
        if handle:
            handle.close()
    if output:
        click.echo(f"exported {count} records to {output}", err=True)


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
    source = audit_source(settings)
    if not store_exists(source):
        raise NotFound(f"no audit store at {settings.audit_db}", code="audit_store_missing")
    keys = load_public_keys(list(public_keys) or [keys_dir(settings)])
    sink = sink or settings.audit.checkpoint_sink_file
    external = None
    if sink is not None:
        external, unreadable = read_sink_file(sink)
        if unreadable:
            click.echo(f"warning: {unreadable} unreadable line(s) in {sink}", err=True)
    report = verify_store(source, keys, external)
    if as_json:
        print_json(report.as_dict())
    else:
        click.echo(render(report))
    sys.exit(0 if report.valid else 1)


@audit.command("prune")
@click.option("--before", required=True, help="Remove records older than this: 2026-01-01, or 90d (that long ago).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_cli
def prune(cli: CliContext, before: str, yes: bool) -> None:
    """Delete old records; a signed prune checkpoint per chain keeps the rest verifiable."""
    settings = cli.settings()
    source = audit_source(settings)
    if not store_exists(source):
        raise NotFound(f"no audit store at {settings.audit_db}", code="audit_store_missing")
    cutoff = parse_when(before)
    when = datetime.fromtimestamp(cutoff, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    if not yes:
        click.confirm(f"Delete audit records older than {when}?", abort=True)
    sink = None
    if settings.audit.checkpoint_sink_file or settings.audit.checkpoint_sink_command:
        sink = CheckpointSink(settings.audit.checkpoint_sink_file, settings.audit.checkpoint_sink_command)
    done = prune_store(source, load_or_create_signer(keys_dir(settings)), cutoff, sink)
    for item in done:
        click.echo(f"chain {item.writer}: {item.records} records removed through seq {item.through_seq}")
    click.echo(f"pruned {sum(i.records for i in done)} records older than {when} from {len(done)} chain(s)")


@audit.command("usage")
@click.option("--by", type=click.Choice(["user", "agent", "tenant", "run", "host", "model"]), default="user", show_default=True)
@click.option("--since", help="Only calls newer than this: 7d, 2026-11-01.")
@click.option("--until", help="Only calls older than this.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@pass_cli
def usage(cli: CliContext, by: str, since: str | None, until: str | None, fmt: str) -> None:
    """Token usage LLM APIs reported, summed per user, agent, tenant, run, host or model."""
    rows = usage_report(audit_source(cli.settings()), by, parse_when(since) if since else None,
                        parse_when(until) if until else None)
    if fmt == "table":
        print_table(rows, [by, "calls", "input_tokens", "output_tokens", "total_tokens"])
    else:
        emit(rows, fmt)
