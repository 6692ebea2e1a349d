"""The Rego unit tests (*_test.rego) run by the real `opa test`, so CI fails when a policy test fails;
and the same through `wardgate policy test`, covering every example under policies/."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from support import POLICIES


def test_policy_unit_tests_pass(opa_binary: str) -> None:
    done = subprocess.run([opa_binary, "test", "--format", "json", str(POLICIES)], capture_output=True, text=True, timeout=120)
    results = json.loads(done.stdout)
    failed = [r["name"] for r in results if r.get("fail") or r.get("error")]
    assert done.returncode == 0 and not failed, failed or done.stderr
    assert len(results) >= 9


def test_policies_are_formatted(opa_binary: str) -> None:
    done = subprocess.run([opa_binary, "fmt", "--list", str(POLICIES)], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "", f"run `opa fmt -w policies/`: {done.stdout}"


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
