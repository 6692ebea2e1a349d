"""``wardgate policy test|eval|explain|reload|bundle|schema``: write Rego against the real input, test it with real OPA."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from ..audit import AuditQuery, query_records
from ..errors import BadRequest, ConfigError, DependencyUnavailable, NotFound
from ..opa_process import find_opa
from ..policy import PolicyInput
from ..policy_reload import policy_revision
from ..settings import Settings
from ._context import CliContext, pass_cli, print_json


@click.group()
def policy() -> None:
    """Test and evaluate policies."""


@policy.command("test")
@click.option("-v", "--verbose", is_flag=True)
@pass_cli
def test(cli: CliContext, verbose: bool) -> None:
    """Run the policies' *_test.rego unit tests with `opa test`."""
    settings = cli.settings()
    command = [find_opa(settings.opa.binary), "test", *(["-v"] if verbose else []), *map(str, settings.opa.paths)]
    sys.exit(subprocess.run(command, timeout=300).returncode)


@policy.command("eval")
@click.option("--input", "input_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_cli
def evaluate(cli: CliContext, input_file: Path) -> None:
    """Show the decision the policies give for an input document (see `policy schema`)."""
    settings = cli.settings()
    try:
        document = PolicyInput.model_validate_json(input_file.read_text())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadRequest(f"{input_file}: {where}: {first['msg']}", code="policy_input_invalid") from None
    print_json(_evaluate(settings, document.model_dump_json(exclude_none=True)))


def _evaluate(settings: Settings, document_json: str) -> Any:
    """The decision the policies on disk give for ``document_json``, by the real `opa eval`."""
    query = "data." + settings.opa.decision_path.replace("/", ".")
    command = [find_opa(settings.opa.binary), "eval", "--format", "json", "--stdin-input"]
    for path in settings.opa.paths:
        command += ["--data", str(path)]
    command += ["--ignore", "*_test.rego", query]
    done = subprocess.run(command, input=document_json, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        click.echo(done.stderr or done.stdout, err=True)
        sys.exit(done.returncode)
    results = json.loads(done.stdout).get("result") or []
    if not results:
        click.echo("decision is undefined: the gateway would answer 503 policy_unavailable")
        sys.exit(1)
    return results[0]["expressions"][0]["value"]


@policy.command("explain")
@click.argument("audit_id")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@pass_cli
def explain(cli: CliContext, audit_id: str, as_json: bool) -> None:
    """Re-evaluate a recorded call's policy input against the current policies; show what changed."""
    settings = cli.settings()
    records = query_records(settings.audit_db, AuditQuery(call_id=audit_id, limit=10))
    if not records:
        raise NotFound(f"no audit record has id {audit_id}", code="audit_record_not_found")
    recorded = next((r for r in records if r["kind"] in ("intent", "refusal") and r.get("policy_input")), None)
    if recorded is None:
        raise NotFound(
            f"call {audit_id} ended before a policy decision (e.g. no valid identity): nothing to re-evaluate",
            code="policy_input_not_recorded",
        )
    now = _evaluate(settings, recorded["policy_input"])
    then_allow = {"allow": True, "deny": False}.get(recorded["decision"])
    now_allow = now.get("allow") if isinstance(now, dict) else None
    then_reasons = recorded["reasons"]
    now_reasons = now.get("reasons", []) if isinstance(now, dict) else []
    document = json.loads(recorded["policy_input"])
    redacted = "[redacted]" in json.dumps(document.get("mcp", {}).get("arguments", {}))
    report = {
        "audit_id": audit_id,
        "recorded": {"allow": then_allow, "reasons": then_reasons, "decision": recorded["decision"], "error": recorded["error"]},
        "policy_revision": {"recorded": recorded.get("policy_revision"), "now": policy_revision(settings.opa.paths)},
        "now": now,
        "changed": then_allow != now_allow or sorted(then_reasons) != sorted(now_reasons),
        "input": document,
        "arguments_redacted": redacted,
    }
    if as_json:
        print_json(report)
        return
    request = document["request"]
    identity = document["identity"]
    when = datetime.fromtimestamp(recorded["time"], tz=timezone.utc).isoformat(timespec="seconds")
    click.echo(f"call {audit_id}  {when}  agent {identity['agent']} (user {identity['user']}, tenant {identity['tenant']})")
    click.echo(f"  {request['method']} {request['scheme']}://{request['host']}:{request['port']}{request['path']}")
    if document.get("mcp"):
        mcp = document["mcp"]
        click.echo(f"  mcp {mcp['method']}" + (f" tool {mcp['tool']}" if mcp.get("tool") else ""))
    shown_then = recorded["decision"] + (f" ({recorded['error']})" if recorded["decision"] == "error" else "")
    if recorded.get("policy_revision"):
        current = policy_revision(settings.opa.paths)
        same = "same files" if current == recorded["policy_revision"] else f"files now {current[:12]}"
        click.echo(f"  decided under policy revision {recorded['policy_revision'][:12]} ({same})")
    click.echo(f"  recorded: {shown_then:<6} {', '.join(then_reasons) or '-'}")
    click.echo(f"  now:      {('allow' if now_allow else 'deny'):<6} {', '.join(now_reasons) or '-'}")
    if not report["changed"]:
        click.echo("  unchanged: the current policy decides this call the same way")
    elif now_allow and not then_allow:
        click.echo("  CHANGED: this call would now be allowed")
    elif then_allow and not now_allow:
        click.echo("  CHANGED: this call would now be denied")
    else:
        click.echo("  CHANGED: same outcome, different reasons")
    if redacted:
        click.echo("  note: argument fields the policy marked sensitive were not recorded; rules on them saw [redacted]")


@policy.command("reload")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the gateway to answer.")
@pass_cli
def reload(cli: CliContext, timeout: float) -> None:
    """Check the policies compile, then make the running gateway load them (no call is dropped)."""
    settings = cli.settings()
    command = [find_opa(settings.opa.binary), "check", "--ignore", "*_test.rego", "--ignore", ".*"]
    done = subprocess.run([*command, *map(str, settings.opa.paths)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise ConfigError(
            "the policies do not compile; the gateway keeps serving the previous ones:\n" + (done.stderr or done.stdout).strip(),
            code="policy_rejected",
        )
    if settings.opa.mode == "external":
        click.echo("policies compile; the external OPA at opa.url loads its own policies")
        return
    listeners = settings.run_dir / "listeners.json"
    status_file = settings.run_dir / "policy.json"
    if not listeners.exists():
        click.echo("policies compile; no gateway is running under this home to reload")
        return
    wanted = policy_revision(settings.opa.paths)
    asked = time.time()
    os.kill(int(json.loads(listeners.read_text())["pid"]), signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = json.loads(status_file.read_text()) if status_file.exists() else {}
        if status.get("time", 0) >= asked and status.get("attempted") == wanted:
            if status["state"] == "rejected":
                raise ConfigError(f"{status['error']} (still serving {status['revision'][:12]})", code="policy_rejected")
            click.echo(f"reloaded: serving policy revision {status['revision'][:12]}")
            return
        time.sleep(0.1)
    raise DependencyUnavailable("the gateway did not report a reload in time", code="policy_reload_timeout")


@policy.command("bundle")
@click.option("-o", "--output", default="bundle.tar.gz", show_default=True, type=click.Path(dir_okay=False, path_type=Path))
@pass_cli
def bundle(cli: CliContext, output: Path) -> None:
    """Build an OPA bundle of the policies and data, for an OPA per replica to pull from a bundle server."""
    settings = cli.settings()
    revision = policy_revision(settings.opa.paths)
    command = [find_opa(settings.opa.binary), "build", "--ignore", "*_test.rego", "--ignore", ".*",
               "--revision", revision, "--output", str(output), *map(str, settings.opa.paths)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise ConfigError("the policies do not build:\n" + (done.stderr or done.stdout).strip(), code="policy_rejected")
    click.echo(f"wrote {output} (revision {revision[:12]})")


@policy.command("schema")
def schema() -> None:
    """Print the JSON Schema of the policy input document."""
    print_json(PolicyInput.model_json_schema())
