"""PolicyClient against a real OPA: a decision object or policy_unavailable, never an allow by accident."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

from support import OpaServer, free_port
from wardgate.gateway.errors import DependencyUnavailable
from wardgate.gateway.policy import (
    IdentityInput,
    PolicyClient,
    PolicyInput,
    RequestInput,
    policy_headers,
    time_input,
)

CASES = {
    "allow": 'decision := {"allow": true, "reasons": ["ok"]}',
    "deny": 'decision := {"allow": false, "reasons": ["nope"]}',
    "undefined": 'decision := {"allow": true} if { input.never_set }',
    "string": 'decision := "allow"',
    "allow_as_string": 'decision := {"allow": "true", "reasons": []}',
    "reasons_not_list": 'decision := {"allow": true, "reasons": "ok"}',
    "no_allow": 'decision := {"reasons": []}',
    "echo_headers": 'decision := {"allow": true, "reasons": [k | some k, _ in input.request.headers]}',
}


@pytest.fixture(scope="module")
def opa(opa_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    root = tmp_path_factory.mktemp("rego")
    for name, body in CASES.items():
        (root / f"{name}.rego").write_text(f"package cases.{name}\n\nimport rego.v1\n\n{body}\n")
    server = OpaServer([root])
    server.start()
    yield server
    server.kill()


def document(headers: list[tuple[str, str]] | None = None) -> PolicyInput:
    return PolicyInput(
        identity=IdentityInput(agent="bot", user="alice", tenant="acme", scopes=[], token_id="t", issuer="wardgate"),
        request=RequestInput(method="GET", scheme="https", host="api.example.com", port=443, path="/", query={},
                             headers=policy_headers(headers or [])),
        time=time_input(),
    )


async def decide(url: str, path: str, doc: PolicyInput | None = None, timeout: float = 1.0):  # noqa: ANN201
    async with PolicyClient(url, path, timeout) as client:
        return await client.decide(doc or document())


@pytest.mark.parametrize(("case", "allow", "reasons"), [("allow", True, ["ok"]), ("deny", False, ["nope"])])
def test_decisions_are_read(opa: OpaServer, case: str, allow: bool, reasons: list[str]) -> None:
    decision = asyncio.run(decide(opa.url, f"cases/{case}/decision"))
    assert (decision.allow, decision.reasons) == (allow, reasons)


@pytest.mark.parametrize(
    ("case", "reason"),
    [("undefined", "policy_undefined"), ("string", "policy_malformed"), ("allow_as_string", "policy_malformed"),
     ("reasons_not_list", "policy_malformed"), ("no_allow", "policy_malformed"), ("missing_package", "policy_undefined")],
)
def test_anything_but_a_decision_is_unavailable(opa: OpaServer, case: str, reason: str) -> None:
    with pytest.raises(DependencyUnavailable) as caught:
        asyncio.run(decide(opa.url, f"cases/{case}/decision"))
    assert (caught.value.code, caught.value.reasons, caught.value.status) == ("policy_unavailable", [reason], 503)


def test_credentials_never_reach_the_policy(opa: OpaServer) -> None:
    headers = [("Authorization", "Bearer s3cret"), ("Cookie", "a=b"), ("X-Api-Key", "k"), ("Accept", "x/y"),
               ("Proxy-Authorization", "Basic eA==")]
    decision = asyncio.run(decide(opa.url, "cases/echo_headers/decision", document(headers)))
    assert decision.reasons == ["accept"]


def test_unreachable_opa_is_unavailable() -> None:
    with pytest.raises(DependencyUnavailable) as caught:
        asyncio.run(decide(f"http://127.0.0.1:{free_port()}", "cases/allow/decision"))
    assert caught.value.reasons == ["policy_error"]


def test_stalled_opa_times_out() -> None:
    """A real listener that accepts and never answers: the client gives up at its timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(DependencyUnavailable) as caught:
            asyncio.run(decide(url, "cases/allow/decision", timeout=0.3))
        assert caught.value.reasons == ["policy_timeout"]
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()


def test_each_call_is_decided_by_opa_and_repeated_answers_are_read_once(opa: OpaServer) -> None:
    async def scenario() -> list[object]:
        async with PolicyClient(opa.url, "cases/echo_headers/decision", 1.0) as client:
            return [await client.decide(document([("Accept", "a")])), await client.decide(document([("Accept", "a")])),
                    await client.decide(document([("X-Other", "b")]))]

    first, again, other = asyncio.run(scenario())
    assert first is again  # the same answer bytes read as the same Decision
    assert other.reasons == ["x-other"] and first.reasons == ["accept"]  # a different input is asked anew
