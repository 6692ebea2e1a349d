"""The decision cache against the real OPA: what a compiled policy reads, and a decision reused only
for calls that agree on all of it; never for a policy that reads the clock, the network or the
whole input, never across a change of policy. OPA's own /metrics counts the queries it answered."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import OpaServer, opa_decisions_answered
from wardgate.gateway.decision_cache import MAX_KEY_BYTES, DecisionCache, Uncacheable, read_paths
from wardgate.gateway.opa_process import nondeterministic_builtins
from wardgate.gateway.policy import Decision, PolicyClient, time_document

REPO = Path(__file__).resolve().parents[2]

# package suffix -> (rule body, the input paths it reads, or the reason it is uncacheable)
READS: dict[str, tuple[str, object]] = {
    "fields": ('decision := {"allow": input.request.method == "GET", "reasons": [input.identity.agent]}',
               (("identity", "agent"), ("request", "method"))),
    "dynamic_key": ('decision := {"allow": true, "reasons": [h | input.request.headers[h] == "x"]}',
                    (("request", "headers"),)),
    "covering_prefix": ('decision := {"allow": input.request.host == "a", "reasons": [k | some k, _ in input.request]}',
                        (("request",),)),
    "import_alias": ('import input.identity as who\n\ndecision := {"allow": who.user == "alice", "reasons": []}',
                     (("identity", "user"),)),  # OPA's compiler resolves the alias
    "data_keyed_by_input": ('decision := {"allow": data.tenants[input.identity.tenant].open, "reasons": []}',
                            (("identity", "tenant"),)),
    "with_replaces": (('decision := {"allow": input.request.method == "GET", "reasons": []}\n\n'
                       'post_allowed if decision.allow with input.request.method as "POST"\n\n'
                       'empty_allowed if decision.allow with input as {}'),
                      (("request", "method"),)),
    "time_field": ('decision := {"allow": input.time.hour < 18, "reasons": []}', (("time", "hour"),)),
    "whole_input": ('decision := {"allow": count(input) > 0, "reasons": []}', "whole input"),
    "input_assigned": ('decision := {"allow": x.request.method == "GET", "reasons": []} if x := input', "whole input"),
    "input_any_key": ('decision := {"allow": true, "reasons": [k | input[k]]}', "whole input"),
    "walked": ('decision := {"allow": true, "reasons": [p | walk(input, [p, "x"])]}', "whole input"),
    "clock": ('decision := {"allow": time.now_ns() > 0, "reasons": []}', "time.now_ns"),
    "network": (('decision := {"allow": http.send({"method": "GET", "url": "http://127.0.0.1:9"}).status_code == 200, '
                 '"reasons": []}'), "http.send"),
    "random": ('decision := {"allow": rand.intn("x", 2) == 0, "reasons": []}', "rand.intn"),
    "printing": ('decision := {"allow": true, "reasons": []} if print("call", input.request.path)', "print"),
}


@pytest.fixture(scope="module")
def nondeterministic(opa_binary: str) -> frozenset[str]:
    return asyncio.run(nondeterministic_builtins(opa_binary))


@pytest.fixture(scope="module")
def opa(opa_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    root = tmp_path_factory.mktemp("reads")
    for name, (body, _) in READS.items():
        (root / f"{name}.rego").write_text(f"package reads.{name}\n\nimport rego.v1\n\n{body}\n")
    (root / "data.json").write_text(json.dumps({"tenants": {"acme": {"open": True}}}))
    # A decision that reaches the clock only through a rule in another package.
    (root / "helpers.rego").write_text("package helpers\n\nimport rego.v1\n\nlate if time.now_ns() > 0\n")
    (root / "via_helper.rego").write_text('package reads.via_helper\n\nimport rego.v1\n\n'
                                          'decision := {"allow": data.helpers.late, "reasons": []}\n')
    server = OpaServer([root])
    server.start()
    yield server
    server.kill()


def compiled(url: str) -> dict[str, dict]:
    with urllib.request.urlopen(f"{url}/v1/policies", timeout=10) as response:
        return {Path(module["id"]).stem: module["ast"] for module in json.load(response)["result"]}


def test_nondeterministic_builtins_come_from_the_binary(nondeterministic: frozenset[str]) -> None:
    assert {"http.send", "time.now_ns", "rand.intn", "uuid.rfc4122", "net.lookup_ip_addr"} <= nondeterministic
    assert "startswith" not in nondeterministic and "count" not in nondeterministic


@pytest.mark.parametrize("case", ["clock", "network", "random"])
def test_the_clock_network_and_randomness_are_known_without_the_binarys_word(opa: OpaServer, case: str) -> None:
    """An OPA that flags no builtin (an older binary) still gets no cache for them."""
    with pytest.raises(Uncacheable, match=re.escape(str(READS[case][1]))):
        read_paths([compiled(opa.url)[case]], frozenset())


@pytest.mark.parametrize("case", sorted(READS))
def test_what_a_compiled_policy_reads(opa: OpaServer, nondeterministic: frozenset[str], case: str) -> None:
    expected = READS[case][1]
    module = compiled(opa.url)[case]
    if isinstance(expected, tuple):
        assert read_paths([module], nondeterministic) == expected
    else:
        with pytest.raises(Uncacheable, match=re.escape(str(expected))):
            read_paths([module], nondeterministic)


def test_only_the_modules_a_decision_reaches_count(opa: OpaServer, nondeterministic: frozenset[str]) -> None:
    modules = compiled(opa.url).values()
    # Other packages in the same OPA call the clock and the network: they do not decide this.
    assert read_paths(modules, nondeterministic, entry=("reads", "fields", "decision")) == READS["fields"][1]
    with pytest.raises(Uncacheable, match="time.now_ns"):
        read_paths(modules, nondeterministic, entry=("reads", "via_helper", "decision"))
    with pytest.raises(Uncacheable):
        read_paths(modules, nondeterministic, entry=("reads",))  # a whole package tree: all of them


def test_the_default_policy_reads_ten_fields_and_never_the_time_token_or_mcp_arguments(
    opa_binary: str, nondeterministic: frozenset[str]
) -> None:
    server = OpaServer([REPO / "policies" / "wardgate"])
    server.start()
    try:
        paths = read_paths(compiled(server.url).values(), nondeterministic)
    finally:
        server.kill()
    assert paths == (("identity", "agent"), ("identity", "scopes"), ("identity", "tenant"), ("identity", "user"),
                     ("mcp", "method"), ("mcp", "tool"), ("request", "host"), ("request", "method"), ("request", "path"),
                     ("request", "port"))


def document(**changes: object) -> dict:
    doc = {
        "version": 1,
        "identity": {"agent": "bot", "user": "alice", "tenant": "acme", "scopes": ["read"], "token_id": "t1",
                     "issuer": "wardgate"},
        "request": {"method": "GET", "scheme": "https", "host": "api.example.com", "port": 443, "path": "/a",
                    "query": {}, "headers": {"accept": "*/*"}},
        "time": time_document(),
    }
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = doc
        for name in parents:
            node = node[name]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return doc


KEYED = (("identity", "agent"), ("request", "headers"), ("request", "method"), ("run",))


@pytest.mark.parametrize(("changes", "same"), [
    ({"identity__token_id": "t2"}, True),  # not read by the policy
    ({"time": time_document(0.0)}, True),
    ({"request__path": "/b"}, True),
    ({"identity__agent": "other"}, False),
    ({"request__method": "POST"}, False),
    ({"request__headers": {"accept": "*/*", "x-extra": "1"}}, False),  # a header more
    ({"request__headers": {}}, False),
    ({"run": None}, False),  # null is not absent: Rego tells them apart
    ({"request__method": KeyError}, False),
])
def test_keys_agree_exactly_on_what_the_policy_reads(changes: dict, same: bool) -> None:
    cache = DecisionCache(16)
    cache.scope(KEYED)
    assert (cache.key(document()) == cache.key(document(**changes))) is same


def test_off_cache_and_huge_keys_are_never_looked_up() -> None:
    cache = DecisionCache(16)
    assert cache.key(document()) is None  # not yet scoped
    cache.scope(KEYED)
    assert cache.key(document(request__headers={"x": "y" * 20_000})) is None
    disabled = DecisionCache(0)
    disabled.scope(KEYED)
    assert not disabled.on and disabled.key(document()) is None


def test_bounded_least_recently_used_and_no_store_across_a_change() -> None:
    cache = DecisionCache(2)
    cache.scope((("request", "path"),))
    allow = Decision(allow=True, reasons=["ok"])
    keys = [cache.key(document(request__path=f"/{n}")) for n in range(3)]
    cache.put(keys[0], cache.generation, allow)
    cache.put(keys[1], cache.generation, allow)
    assert cache.get(keys[0]) is allow  # 0 is now the most recently used
    cache.put(keys[2], cache.generation, allow)
    assert cache.get(keys[1]) is None and cache.get(keys[0]) is allow and len(cache) == 2
    before = cache.generation
    cache.scope((("request", "path"),))
    assert len(cache) == 0
    cache.put(keys[0], before, allow)  # answered by the policy served before the change
    assert cache.get(keys[0]) is None
    cache.put(keys[0], cache.generation, Decision(allow=True, reasons=[], decision_id="d-1"))
    assert cache.get(keys[0]) is None  # OPA logs its decisions: each one must reach it


def test_keys_are_bounded_in_bytes_too() -> None:
    """Capacity in entries alone would let 4096 keys of 4 KiB each hold 16 MiB: the bytes are bounded too."""
    cache = DecisionCache(1_000_000)
    cache.scope((("request", "headers"),))
    allow = Decision(allow=True, reasons=[])
    for n in range(3000):
        key = cache.key(document(request__headers={"x": f"{n:06d}" + "v" * 3900}))
        assert key is not None
        cache.put(key, cache.generation, allow)
    assert len(cache) * 3900 <= MAX_KEY_BYTES < 3000 * 3900
    assert cache.get(key) is allow  # the newest stays


async def decisions(url: str, path: str, documents: list[dict], nondeterministic: frozenset[str]) -> list[Decision]:
    async with PolicyClient(url, path, 1.0, cache_size=64) as client:
        client.allow_cache(nondeterministic)
        await client.read_policy()
        return [await client.decide(doc) for doc in documents]


@pytest.mark.parametrize(("case", "documents", "asked"), [
    # Reads method and agent: six calls that differ elsewhere are one question, a new method another.
    ("fields", [document(identity__token_id=f"t{n}", request__path=f"/{n}") for n in range(6)]
     + [document(request__method="POST")], 2),
    # Reads the hour: calls in the same hour agree, another hour is asked anew.
    ("time_field", [document(), document(), document(time=time_document(0.0))], 2),
    # Uncacheable: every call reaches OPA.
    ("clock", [document(), document(), document()], 3),
    ("whole_input", [document(), document(), document()], 3),
])
def test_opa_is_asked_once_per_distinct_read(
    opa: OpaServer, nondeterministic: frozenset[str], case: str, documents: list[dict], asked: int
) -> None:
    before = opa_decisions_answered(opa.url)
    answers = asyncio.run(decisions(opa.url, f"reads/{case}/decision", documents, nondeterministic))
    assert opa_decisions_answered(opa.url) - before == asked
    assert all(isinstance(answer, Decision) for answer in answers)
    if case == "fields":
        assert [answer.allow for answer in answers] == [True] * 6 + [False]


def test_an_external_opa_is_asked_every_time(opa: OpaServer) -> None:
    async def scenario() -> int:
        async with PolicyClient(opa.url, "reads/fields/decision", 1.0, cache_size=64) as client:
            await client.read_policy()  # never allowed: its policy can change without wardgate knowing
            for _ in range(3):
                await client.decide(document())
            return len(client.cache)

    before = opa_decisions_answered(opa.url)
    assert asyncio.run(scenario()) == 0
    assert opa_decisions_answered(opa.url) - before == 3


def test_a_new_policy_is_never_answered_from_the_old_ones_decisions(
    opa_binary: str, nondeterministic: frozenset[str], tmp_path: Path
) -> None:
    servers = []
    for allow in ("true", "false"):
        root = tmp_path / allow
        root.mkdir()
        (root / "p.rego").write_text(f'package p\n\nimport rego.v1\n\ndecision := {{"allow": {allow}, '
                                     f'"reasons": [input.request.method]}}\n')
        servers.append(OpaServer([root]))
        servers[-1].start()
    try:
        async def scenario() -> list[bool]:
            async with PolicyClient(servers[0].url, "p/decision", 1.0, cache_size=64) as client:
                client.allow_cache(nondeterministic)
                await client.read_policy()
                seen = [(await client.decide(document())).allow, (await client.decide(document())).allow]
                await client.retarget(servers[1].url)  # what a reload does
                seen.append((await client.decide(document())).allow)
                await client.read_policy()
                seen += [(await client.decide(document())).allow, (await client.decide(document())).allow]
                return seen

        assert asyncio.run(scenario()) == [True, True, False, False, False]
        assert opa_decisions_answered(servers[0].url) == 1 and opa_decisions_answered(servers[1].url) == 2
    finally:
        for server in servers:
            server.kill()
