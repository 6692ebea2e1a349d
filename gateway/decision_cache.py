"""Decisions remembered by what the policy reads: the same answer for the same inputs it looks at.

A Rego policy is a function of its input and its data, unless it calls a builtin that is not (the
clock, the network, randomness). When wardgate runs OPA itself (``[opa] mode = "managed"``) the data
and policies change only when wardgate restarts or reloads that OPA, so a decision may be reused for
any later call that agrees with it on every part of the input the policy can read.

What the policy can read comes from OPA itself: the compiled modules it serves (``GET
/v1/policies``), of which those the decision rule reaches. :func:`read_paths` collects every
reference into ``input`` in them and keeps its longest static prefix (``input.request.headers[h]`` →
``request.headers``); the cache key is the input's value at each of those paths
(:meth:`DecisionCache.key`). The default policy reads ten fields (identity, method, host, port,
path, the MCP method and tool) and never ``time`` or ``token_id``, so its calls agree often. The
cache stays off, and every call goes to OPA, when:

- a module uses the whole input (``x := input``, ``walk(input, …)``, ``input[k]``): the key would be
  the whole document, ``time.unix`` included;
- a module calls a builtin OPA marks non-deterministic (``opa capabilities``: ``http.send``,
  ``time.now_ns``, ``rand.intn`` …) or one whose answer depends on when it runs or that exists for its
  side effect (:data:`ALSO_UNCACHEABLE`: ``print``, ``trace``, x509 chain verification, and the
  non-deterministic builtins of OPA 1.x, in case ``[opa] binary`` is an OPA that does not flag them);
- the modules cannot be read.

A call is asked, and its answer not kept, when the answer carries a ``decision_id`` (OPA's decision
log is on and expects every decision) or its key would be larger than :data:`MAX_KEY`.

A reload or a restart of OPA first turns the cache off and empties it (:meth:`DecisionCache.scope`);
a query that was in flight across that change cannot store its answer (``generation``).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .policy import Decision

# Not flagged non-deterministic by OPA, but their result depends on when they run (certificate
# validity is checked against the clock) or they exist for their side effect (policy debugging).
ALSO_UNCACHEABLE = frozenset({
    "print", "internal.print", "trace",
    "crypto.x509.parse_and_verify_certificates", "crypto.x509.parse_and_verify_certificates_with_options",
    # What OPA 1.22 flags itself (an older binary may flag none of them).
    "http.send", "io.jwt.decode_verify", "io.jwt.encode_sign", "io.jwt.encode_sign_raw", "json.match_schema",
    "json.verify_schema", "net.lookup_ip_addr", "opa.runtime", "rand.intn", "time.now_ns", "uuid.rfc4122",
})
MAX_KEY = 4 << 10  # bytes; a larger key (long header values, big MCP arguments) is not cached
MAX_KEY_BYTES = 8 << 20  # all keys together: the least recently used go first past this

Path = tuple[str, ...]


class Uncacheable(Exception):
    """The policy may answer the same input differently; ``args[0]`` says why."""


class _Reads:
    """What one module's rules read: input paths, data paths (other rules, data files), a reason not to cache."""

    def __init__(self) -> None:
        self.inputs: set[Path] = set()
        self.data: set[Path] = set()
        self.problem = ""


def read_paths(modules: Iterable[dict[str, Any]], nondeterministic: frozenset[str],
               entry: Path | None = None) -> tuple[Path, ...]:
    """The input paths the compiled ``modules`` can read, shortest covering set, sorted.

    With ``entry`` (the decision's path under ``data``) only the modules that rule can reach count:
    its own package and, transitively, every package a reached rule refers to. Raises
    :class:`Uncacheable` when a counted module reads the whole input or calls a builtin in
    ``nondeterministic`` or :data:`ALSO_UNCACHEABLE`."""
    banned = nondeterministic | ALSO_UNCACHEABLE
    read: list[tuple[Path, _Reads]] = []
    for module in modules:
        reads = _Reads()
        _walk(module.get("rules", []), reads, banned)
        _walk(module.get("imports", []), reads, banned)
        read.append((_static_prefix(module["package"]["path"][1:]), reads))
    counted = _reachable(read, entry) if entry is not None else range(len(read))
    found: set[Path] = set()
    for index in counted:
        reads = read[index][1]
        if reads.problem:
            raise Uncacheable(reads.problem)
        found |= reads.inputs
    covering: list[Path] = []
    for path in sorted(found, key=len):
        if not any(path[:len(kept)] == kept for kept in covering):
            covering.append(path)
    return tuple(sorted(covering))


def _reachable(read: list[tuple[Path, _Reads]], entry: Path) -> set[int]:
    """Indexes of the modules a reference to ``data.<entry>`` can reach, directly or through others."""
    reached: set[int] = set()
    pending = [entry]
    while pending:
        ref = pending.pop()
        for index, (package, reads) in enumerate(read):
            # data.a.b.rule reaches package a.b; data.a reaches every package under a.
            if index not in reached and (package[:len(ref)] == ref or ref[:len(package)] == package):
                reached.add(index)
                pending.extend(reads.data)
    return reached


def _walk(node: Any, reads: _Reads, banned: frozenset[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, reads, banned)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind == "var" and node.get("value") == "input":
        reads.problem = reads.problem or "a module uses the whole input"
    if kind == "ref" and isinstance(node.get("value"), list) and node["value"]:
        terms = node["value"]
        head = terms[0]
        if isinstance(head, dict) and head.get("type") == "var":
            name = head.get("value")
            static = _static_prefix(terms[1:])
            if name == "input":
                if static:
                    reads.inputs.add(static)
                else:
                    reads.problem = reads.problem or "a module uses the whole input"
            elif name == "data":
                reads.data.add(static)
            elif ".".join((str(name), *static)) in banned:
                reads.problem = reads.problem or f"a module calls {'.'.join((str(name), *static))}"
        else:
            _walk(head, reads, banned)
        _walk(terms[1:], reads, banned)
        return
    for key, value in node.items():
        if key == "target":  # `with input.x as v`: replaces, does not read
            continue
        _walk(value, reads, banned)


def _static_prefix(terms: list[Any]) -> Path:
    prefix: list[str] = []
    for term in terms:
        if not (isinstance(term, dict) and term.get("type") == "string" and isinstance(term.get("value"), str)):
            break
        prefix.append(term["value"])
    return tuple(prefix)


def _at(document: Any, path: Path) -> list[Any]:
    """[value] at ``path``, or [] when it is absent (undefined in Rego, which null is not)."""
    for name in path:
        if type(document) is not dict or name not in document:
            return []
        document = document[name]
    return [document]


class DecisionCache:
    """Bounded, least recently used; off (every lookup misses) until :meth:`scope` gives it paths."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[bytes, Decision] = OrderedDict()
        self._key_bytes = 0
        self._paths: tuple[Path, ...] | None = None
        self.generation = 0
        self.hits = 0
        self.misses = 0
        self.why_off = "not yet read the policy"

    @property
    def on(self) -> bool:
        return self._paths is not None

    def scope(self, paths: tuple[Path, ...] | None, why_off: str = "") -> None:
        """Forget every entry and key later calls by ``paths`` (None: off, for ``why_off``)."""
        self.generation += 1
        self._entries.clear()
        self._key_bytes = 0
        self._paths = paths if self._capacity > 0 else None
        if self._capacity <= 0:
            why_off = "[opa] decision_cache = 0"
        self.why_off = "" if self._paths is not None else why_off

    def key(self, document: dict[str, Any]) -> bytes | None:
        """The cache key of an input document, or None when the cache is off or the key too large."""
        paths = self._paths
        if paths is None:
            return None
        try:
            key = json.dumps([_at(document, path) for path in paths], sort_keys=True,
                             separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError):
            return None
        return key if len(key) <= MAX_KEY else None

    def get(self, key: bytes) -> Decision | None:
        decision = self._entries.get(key)
        if decision is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return decision

    def put(self, key: bytes, generation: int, decision: Decision) -> None:
        """Remember ``decision`` unless the policy changed since the query went out."""
        if generation != self.generation or decision.decision_id is not None or key in self._entries:
            return
        self._entries[key] = decision
        self._key_bytes += len(key)
        while len(self._entries) > self._capacity or self._key_bytes > MAX_KEY_BYTES:
            old, _ = self._entries.popitem(last=False)
            self._key_bytes -= len(old)

    def __len__(self) -> int:
        return len(self._entries)
