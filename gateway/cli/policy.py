"""``wardgate policy test|eval|schema``: write Rego against the real input, test it with real OPA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
from pydantic import ValidationError

from ..errors import BadRequest
from ..opa_process import find_opa
from ..policy import PolicyInput
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
    query = "data." + settings.opa.decision_path.replace("/", ".")
    command = [find_opa(settings.opa.binary), "eval", "--format", "json", "--stdin-input"]
    for path in settings.opa.paths:
        command += ["--data", str(path)]
    command += ["--ignore", "*_test.rego", query]
    done = subprocess.run(
        command, input=document.model_dump_json(exclude_none=True), capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        click.echo(done.stderr or done.stdout, err=True)
        sys.exit(done.returncode)
    results = json.loads(done.stdout).get("result") or []
    if not results:
        click.echo("decision is undefined: the gateway would answer 503 policy_unavailable")
        sys.exit(1)
    print_json(results[0]["expressions"][0]["value"])


@policy.command("schema")
def schema() -> None:
    """Print the JSON Schema of the policy input document."""
    print_json(PolicyInput.model_json_schema())
