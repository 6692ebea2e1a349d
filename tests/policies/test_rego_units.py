"""The Rego unit tests (*_test.rego) run by the real `opa test`, so CI fails when a policy test fails."""

from __future__ import annotations

import json
import subprocess

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
