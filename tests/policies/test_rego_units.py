"""Every *_test.rego under policies/ runs with the real `opa test`, through `wardgate policy test`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from support import POLICIES


def policy_test(tmp_path: Path, policies: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "wardgate.toml"
    config.write_text(f'version = 1\n\n[opa]\npaths = ["{policies}"]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "wardgate.gateway.cli", "--config", str(config), "--home", str(tmp_path / "home"),
         "policy", "test", "-v"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )


def test_every_policy_unit_test_passes(opa_binary: str, tmp_path: Path) -> None:
    done = policy_test(tmp_path, POLICIES)
    assert done.returncode == 0, done.stdout + done.stderr
    passed, total = map(int, re.search(r"PASS: (\d+)/(\d+)", done.stdout).groups())
    assert passed == total
    for test_file in POLICIES.rglob("*_test.rego"):
        package = re.search(r"^package (\S+)", test_file.read_text(), re.M).group(1)
        assert f"data.{package}.test_" in done.stdout, f"{test_file} ran no test"


def test_a_failing_example_fails_the_command(opa_binary: str, tmp_path: Path) -> None:
    copy = tmp_path / "policies"
    shutil.copytree(POLICIES, copy)
    example = copy / "examples" / "ownership_test.rego"
    example.write_text(example.read_text() + '\ntest_wrong if {\n\townership.decision.allow with input as rest("alice", "/users/bob")\n}\n')
    done = policy_test(tmp_path, copy)
    assert done.returncode != 0
    assert "test_wrong: FAIL" in done.stdout
