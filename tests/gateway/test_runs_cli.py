"""``wardgate runs list|show|cancel`` as a real process over the SDK's SQLite checkpoint store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wardgate.sdk.errors import RunCancelled
from wardgate.sdk.runs import Run


def wardgate(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDGATE_")}
    return subprocess.run([sys.executable, "-m", "wardgate.gateway.cli", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=60, cwd=home.parent, env=env)


def test_list_show_cancel(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = f"sqlite:///{home}/runs.db"
    with Run(store, "done-run") as run:
        run.step(lambda: {"a": 1}, name="first")
        run.complete("ok")
    open_run = Run(store, "open-run").open()
    open_run.step(lambda: 2, name="first")
    open_run.close("running")

    listed = wardgate(home, "runs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {(r["id"], r["status"], r["steps"]) for r in json.loads(listed.stdout)} == {
        ("done-run", "completed", 1), ("open-run", "running", 1)}
    table = wardgate(home, "runs", "list", "--status", "running")
    assert "open-run" in table.stdout and "done-run" not in table.stdout

    shown = json.loads(wardgate(home, "runs", "show", "done-run").stdout)
    assert shown["output"] == '"ok"' and [s["name"] for s in shown["steps_recorded"]] == ["first"]
    assert json.loads(shown["steps_recorded"][0]["output"]) == {"a": 1}

    assert wardgate(home, "runs", "cancel", "open-run").stdout.strip() == "cancelled run open-run"
    with pytest.raises(RunCancelled):
        Run(store, "open-run").open()
    refused = wardgate(home, "runs", "cancel", "done-run")
    assert refused.returncode == 2 and "run_not_cancellable" in refused.stderr
    missing = wardgate(home, "runs", "show", "nope")
    assert missing.returncode == 2 and "run_not_found" in missing.stderr
