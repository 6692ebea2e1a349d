"""The `wardgate` command as a user runs it: a real process, real state folder, real OPA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
from cryptography import x509

from support import POLICIES, REPO

from wardgate.gateway.keys import KeyRing


def wardgate(home: Path, *args: str, stdin: str | None = None, cwd: Path | None = None, timeout: float = 60,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WARDGATE_HOME": str(home), "WARDGATE_OPA__PATHS": str(POLICIES), **(env or {})}
    env.pop("WARDGATE_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "wardgate.gateway.cli", *args],
        capture_output=True, text=True, env=env, cwd=cwd or home.parent, input=stdin, timeout=timeout,
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "state"


def test_agents_and_tokens(home: Path) -> None:
    created = wardgate(home, "agents", "create", "triage-bot", "--tenant", "acme", "--scope", "read", "--scope", "write")
    assert created.returncode == 0, created.stderr
    listed = json.loads(wardgate(home, "agents", "list", "--json").stdout)
    assert [(a["name"], a["tenant"], a["scopes"]) for a in listed] == [("triage-bot", "acme", ["read", "write"])]
    assert "triage-bot" in wardgate(home, "agents", "list").stdout

    minted = wardgate(home, "tokens", "mint", "--agent", "triage-bot", "--user", "alice", "--ttl", "10m", "--scope", "read", "--run", "r1")
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    keys = KeyRing.load(home / "keys", create=False)
    claims = jwt.decode(token, keys.public[keys.signing.kid], algorithms=["EdDSA"], audience="wardgate-proxy")
    assert (claims["sub"], claims["act"], claims["tenant"], claims["scope"], claims["run"]) == (
        "alice", {"sub": "triage-bot"}, "acme", "read", "r1")
    assert claims["exp"] - claims["iat"] == 600


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["agents", "create", "Bad Name", "--tenant", "acme"], "invalid_agent"),
        (["tokens", "mint", "--agent", "ghost", "--user", "alice"], "agent_not_found"),
        (["tokens", "mint", "--agent", "bot", "--user", "alice", "--ttl", "9h"], "token_ttl_invalid"),
        (["tokens", "mint", "--agent", "bot", "--user", "alice", "--scope", "admin"], "scope_not_allowed"),
        (["tokens", "mint", "--agent", "bot", "--user", "alice", "--ttl", "soon"], "invalid_ttl"),
        (["audit", "query", "--since", "yesterday"], "invalid_time"),
        # A kid may start with "-" (base64url): it is the argument, not an unknown option.
        (["keys", "revoke", "-Oabc"], "key_not_found"),
        (["keys", "revoke", "-hAbc"], "key_not_found"),  # not the help: -h is the kid's first letters
        (["keys", "revoke", "--xYz"], "key_not_found"),
    ],
)
def test_errors_are_one_line_with_a_code(home: Path, args: list[str], code: str) -> None:
    assert wardgate(home, "agents", "create", "bot", "--tenant", "acme", "--scope", "read").returncode == 0
    done = wardgate(home, *args)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error[{code}]: ")
    assert "Traceback" not in done.stderr


def test_unknown_config_key_stops_start_up_with_a_hint(tmp_path: Path) -> None:
    (tmp_path / "wardgate.toml").write_text("[proxy]\nlisten_port = 9000\n")
    done = wardgate(tmp_path / "state", "up", cwd=tmp_path)
    assert done.returncode == 2
    assert "error[config_unknown_key]: unknown setting proxy.'listen_port'" in done.stderr


def test_a_policy_that_does_not_compile_stops_start_up_with_opas_message(home: Path, opa_binary: str) -> None:
    broken = home.parent / "broken-policies"
    broken.mkdir(parents=True)
    (broken / "authz.rego").write_text("package wardgate.authz\n\ndecision := {\n")
    done = wardgate(home, "up", "--proxy-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                    env={"WARDGATE_OPA__PATHS": str(broken)})
    assert done.returncode == 2
    assert done.stderr.startswith("error[policy_rejected]: OPA did not start with the policies: ")
    assert "authz.rego:" in done.stderr and "Traceback" not in done.stderr
    assert not list((home / "run").glob("opa-*.sock")), "nothing left behind"


def test_ca_path_prints_a_ca_certificate(home: Path) -> None:
    done = wardgate(home, "ca", "path")
    path = Path(done.stdout.strip())
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not list(path.parent.glob("*.tmp"))
    assert (path.parent / "mitmproxy-ca.pem").stat().st_mode & 0o777 == 0o600
    assert wardgate(home, "ca", "path").stdout == done.stdout  # created once


def test_policy_test_runs_the_rego_unit_tests(home: Path, opa_binary: str) -> None:
    done = wardgate(home, "policy", "test", "-v")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout and "FAIL" not in done.stdout


@pytest.mark.parametrize(("method", "scopes", "allow", "reasons"), [
    ("GET", [], True, ["destination_allowed"]),
    ("POST", [], False, ["write_scope_required"]),
    ("POST", ["write"], True, ["destination_allowed"]),
])
def test_policy_eval_shows_the_decision(home: Path, tmp_path: Path, opa_binary: str, method: str, scopes: list[str], allow: bool, reasons: list[str]) -> None:
    document = {
        "version": 1,
        "identity": {"agent": "demo-agent", "user": "alice", "tenant": "demo", "scopes": scopes, "token_id": "t", "issuer": "wardgate"},
        "request": {"method": method, "scheme": "http", "host": "127.0.0.1", "port": 8089, "path": "/", "query": {}, "headers": {}},
        "time": {"unix": 0, "rfc3339": "1970-01-01T00:00:00Z", "weekday": 3, "hour": 0},
    }
    (tmp_path / "input.json").write_text(json.dumps(document))
    done = wardgate(home, "policy", "eval", "--input", str(tmp_path / "input.json"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"allow": allow, "reasons": reasons}


def test_policy_eval_refuses_a_document_that_is_not_the_input_schema(home: Path, tmp_path: Path) -> None:
    (tmp_path / "input.json").write_text(json.dumps({"version": 1, "request": {}}))
    done = wardgate(home, "policy", "eval", "--input", str(tmp_path / "input.json"))
    assert done.returncode == 2 and done.stderr.startswith("error[policy_input_invalid]")


def test_policy_schema_is_the_input_model(home: Path) -> None:
    schema = json.loads(wardgate(home, "policy", "schema").stdout)
    assert set(schema["required"]) == {"identity", "request", "time"}
    assert {"version", "identity", "request", "credential", "mcp", "run", "time"} <= set(schema["properties"])


def test_audit_query_table_and_json(gateway, upstream) -> None:  # noqa: ANN001
    import requests

    token = gateway.mint("acme-bot", user="carol")
    proxy = gateway.proxy_with(token)
    response = requests.get(f"{upstream.http_url}/private/cli", proxies={"http": proxy}, timeout=10)
    assert response.status_code == 403
    call_id = response.headers["X-Wardgate-Audit-Id"]
    as_json = json.loads(wardgate(gateway.home, "--config", str(gateway.config), "audit", "query", "--call", call_id, "--json").stdout)
    assert [(r["kind"], r["user"], r["decision"], r["status"]) for r in as_json] == [("refusal", "carol", "deny", 403)]
    table = wardgate(gateway.home, "--config", str(gateway.config), "audit", "query", "--user", "carol", "--since", "1h").stdout
    header, row = table.splitlines()[:2]
    assert header.split()[:4] == ["TIME", "CALL_ID", "KIND", "AGENT"]
    assert call_id in row and "/private/cli" in row and "policy_denied" in row


def test_demo_shows_allowed_denied_and_unauthenticated_calls(home: Path, opa_binary: str) -> None:
    done = wardgate(home, "demo", cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "-> 200 upstream answered" in out
    assert "-> 403 policy_denied ['write_scope_required']" in out
    assert "-> 403 policy_denied ['destination_not_allowed']" in out
    assert "-> 407 identity_missing" in out
    trail = out.split("audit trail")[1]
    assert trail.count("refusal") == 3 and "intent" in trail and "outcome" in trail
