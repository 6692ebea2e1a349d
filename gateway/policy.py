"""The policy contract: the input document wardgate sends to OPA and the decision it accepts.

The input is versioned (``version: 1``) and documented by its JSON Schema (``wardgate policy
schema``; docs/policy-input.schema.json). Credentials never appear in it: request headers that
carry secrets are dropped before the document is built, and ``credential`` names the service whose
credential would be injected, never its value.

Anything but a well-formed decision object from OPA within the timeout — unreachable, slow,
undefined, malformed — is :class:`DependencyUnavailable` (``policy_unavailable``): never allow.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timezone
from typing import Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from .decision_cache import DecisionCache, Uncacheable, read_paths
from .errors import DependencyUnavailable
from .opa_address import opa_session
from .opa_transport import OpaTransport, OpaTransportError

log = logging.getLogger("wardgate.policy")

# Headers whose values are credentials or session state. Never shown to the policy.
CREDENTIAL_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key", "x-auth-token"}
)
MAX_HEADER_VALUE = 1024


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IdentityInput(_Doc):
    agent: str = Field(description="Agent name (the token's act.sub).")
    user: str = Field(description="The user on whose behalf the agent acts (the token's sub).")
    tenant: str
    scopes: list[str]
    token_id: str = Field(description="The token's jti.")
    issuer: str
    run: str | None = Field(default=None, description="Durable run id the token was minted for.")


class RequestInput(_Doc):
    method: str = Field(examples=["GET"])
    scheme: Literal["http", "https"]
    host: str = Field(description="Lower-case host name or IP literal the call goes to.")
    port: int
    path: str = Field(description="Path without the query string.", examples=["/repos/acme/app/issues"])
    query: dict[str, list[str]] = Field(description="Decoded query parameters; a name may repeat.")
    headers: dict[str, str] = Field(
        description="Lower-case request headers, credential-bearing ones removed, values cut at 1 KiB."
    )


class CredentialInput(_Doc):
    service: str = Field(description="Name of the service whose credential would be injected.")


class McpInput(_Doc):
    method: str = Field(
        description="JSON-RPC method (tools/call, tools/list, initialize ...); \"\" for a JSON-RPC response.",
        examples=["tools/call"],
    )
    tool: str | None = Field(default=None, description="The tool named by tools/call.", examples=["create_issue"])
    arguments: dict[str, Any] | None = Field(
        default=None, description="tools/call arguments as sent; absent when filtering tools/list."
    )
    server: str | None = Field(
        default=None, description="The MCP endpoint, scheme://host[:port]/path.", examples=["https://mcp.example.com/mcp"]
    )
    kind: Literal["request", "notification", "response"] = "request"
    protocol_version: str | None = Field(default=None, examples=["2026-07-28", "2025-11-25"])
    listing: bool = Field(
        default=False,
        description="true when wardgate asks whether a tools/list entry may be shown: method is tools/call, "
        "tool is set, arguments are absent. Argument constraints should not hide a tool here.",
    )


class RunInput(_Doc):
    id: str
    step: str | None = None


class TimeInput(_Doc):
    unix: float
    rfc3339: str
    weekday: int = Field(description="0 = Monday … 6 = Sunday, UTC.")
    hour: int = Field(description="Hour of day, UTC.")


class PolicyInput(_Doc):
    """The document posted to OPA as ``input`` for every call."""

    version: Literal[1] = 1
    identity: IdentityInput
    request: RequestInput
    credential: CredentialInput | None = None
    mcp: McpInput | None = None
    run: RunInput | None = None
    time: TimeInput


def time_input(now: float | None = None) -> TimeInput:
    return TimeInput(**time_document(now))


def time_document(now: float | None = None) -> dict[str, Any]:
    """``time_input(now)`` as the plain dict that goes into the input document."""
    now = time.time() if now is None else now
    moment = datetime.fromtimestamp(now, tz=timezone.utc)
    return {
        "unix": now,
        "rfc3339": moment.isoformat().replace("+00:00", "Z"),
        "weekday": moment.weekday(),
        "hour": moment.hour,
    }


def policy_headers(headers: list[tuple[str, str]]) -> dict[str, str]:
    """Lower-cased headers without credentials; repeated names joined with ', '."""
    result: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        if key in CREDENTIAL_HEADERS:
            continue
        value = value[:MAX_HEADER_VALUE]
        result[key] = f"{result[key]}, {value}" if key in result else value
    return result


class Decision(BaseModel):
    """What OPA must answer: an object with at least ``allow`` (bool) and ``reasons``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    allow: StrictBool
    reasons: list[StrictStr] = []
    require_approval: StrictBool = False
    redact: list[StrictStr] = []
    limits: dict[str, Any] = {}
    # Report mode: a denial is recorded as `would_deny` and the call proceeds (rolling out a policy).
    report_only: StrictBool = False
    decision_id: str | None = None


class PolicyClient:
    """Asks OPA for decisions over long-lived keep-alive connections (:class:`OpaTransport`).

    The input document is serialised once with the stdlib ``json`` and posted straight to OPA's Data
    API (``POST /v1/data/<decision_path>``); the answer is checked by :func:`read_decision`, which
    accepts exactly what :class:`Decision` accepts. Retries are off (but for one fresh connection
    when OPA closed an idle one as the query went out): a decision that is late is a denial, and the
    agent may retry itself. Neither opa-python-client nor aiohttp's ClientSession is used: their
    per-query overhead was the largest part of the policy stage (docs/architecture.md).
    """

    def __init__(self, url: str, decision_path: str, timeout: float, pool_size: int = 100,
                 cache_size: int = 0) -> None:
        self._path = "/v1/data/" + decision_path.strip("/").replace(".", "/")
        self._entry = tuple(self._path.removeprefix("/v1/data/").split("/"))
        self._timeout = timeout
        self._pool_size = pool_size
        self._url = url
        self._transport = OpaTransport(url, pool_size)
        self._closing: set[asyncio.Task[None]] = set()
        self._read: dict[bytes, Decision] = {}  # OPA's answer bytes -> the Decision they read as
        # Digest of the policy files being served, when wardgate manages OPA (audit: policy_revision).
        self.revision: str | None = None
        # Off until allow_cache(): only an OPA whose policies and data change through wardgate may
        # have its decisions reused (gateway/decision_cache.py).
        self.cache = DecisionCache(cache_size)
        self._nondeterministic: frozenset[str] | None = None

    @property
    def url(self) -> str:
        return self._url

    def allow_cache(self, nondeterministic: frozenset[str]) -> None:
        """Let :meth:`read_policy` turn the decision cache on; ``nondeterministic``: OPA's builtins
        whose answers are not a function of their arguments (``opa capabilities``)."""
        self._nondeterministic = nondeterministic

    async def read_policy(self) -> None:
        """Key the decision cache by what the policy OPA serves now reads; off if that is unknown.

        Called after OPA starts, restarts or is replaced. The cache is emptied and off from the
        first line on, so no decision made before the change is reused after it."""
        if self._nondeterministic is None:
            self.cache.scope(None, "decisions are reused only from the OPA wardgate manages")
            return
        self.cache.scope(None, "reading the policy OPA serves")
        generation = self.cache.generation
        paths, why = None, ""
        try:
            modules = await served_modules(self._url, max(self._timeout, 5.0))
            paths = read_paths(modules, self._nondeterministic, entry=self._entry)
        except Uncacheable as reason:
            why = str(reason)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError, TypeError):
            why = "could not read the policy OPA serves"
        if self.cache.generation != generation:
            return  # changed again while reading: the newer read decides
        self.cache.scope(paths, why)
        if paths is not None and self.cache.on:
            log.info("decision cache on, keyed by input.%s", ", input.".join(".".join(p) for p in paths))
        else:
            log.warning("decision cache off: %s", self.cache.why_off)

    async def retarget(self, url: str) -> None:
        """Send new queries to ``url``; queries already in flight finish on the old connections."""
        self.cache.scope(None, "reading the policy OPA serves")
        self._url = url
        old, self._transport = self._transport, OpaTransport(url, self._pool_size)

        async def close_later() -> None:
            await asyncio.sleep(self._timeout + 1.0)
            await old.close()

        task = asyncio.create_task(close_later())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def __aenter__(self) -> "PolicyClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in list(self._closing):
            task.cancel()
        await self._transport.close()

    def decided(self, document: dict[str, Any]) -> Decision | None:
        """The decision an earlier call that agrees on every field the policy reads was given
        (gateway/decision_cache.py), without waiting; None when OPA must be asked (``ask``)."""
        key = self.cache.key(document)
        return self.cache.get(key) if key is not None else None

    async def decide(self, document: PolicyInput | dict[str, Any]) -> Decision:
        """The decision on ``document`` (a plain dict shaped like :class:`PolicyInput`, or the model)."""
        if isinstance(document, BaseModel):
            document = document.model_dump(mode="json", exclude_none=True)
        decision = self.decided(document)
        return decision if decision is not None else await self.ask(document)

    async def ask(self, document: dict[str, Any]) -> Decision:
        """OPA's decision on ``document``, kept for the calls that agree with it; ``decided`` is
        the look in that cache first (``decide`` is both)."""
        cache = self.cache
        key = cache.key(document)
        generation = cache.generation
        body = json.dumps({"input": document}, separators=(",", ":")).encode()
        try:
            async with asyncio.timeout(self._timeout):
                status, raw = await self._transport.post(self._path, body)
        except TimeoutError:
            raise _unavailable("policy engine did not answer in time", "policy_timeout") from None
        except (OpaTransportError, OSError):
            raise _unavailable("policy engine is unreachable or failed", "policy_error") from None
        if status != 200:
            raise _unavailable("policy engine is unreachable or failed", "policy_error")
        # OPA answers most calls with one of a few byte-identical documents: the same bytes always
        # read as the same (frozen) Decision, so a repeat skips json.loads and the checks.
        decision = self._read.get(raw)
        if decision is None:
            decision = self._parse(raw)
            if len(self._read) >= 256:
                self._read.clear()
            self._read[raw] = decision
        if key is not None:
            cache.put(key, generation, decision)
        return decision

    @staticmethod
    def _parse(raw: bytes) -> Decision:
        try:
            answer = json.loads(raw)
        except ValueError:
            raise _unavailable("policy engine is unreachable or failed", "policy_error") from None
        result = answer.get("result") if isinstance(answer, dict) else None
        if result is None:
            raise _unavailable("policy decision is undefined", "policy_undefined")
        if not isinstance(result, dict):
            raise _unavailable("policy decision is not an object", "policy_malformed")
        decision = read_decision(result, answer.get("decision_id"))
        if decision is None:
            raise _unavailable("policy decision is malformed", "policy_malformed")
        return decision


async def served_modules(url: str, timeout: float) -> list[dict[str, Any]]:
    """The compiled modules OPA at ``url`` serves (``GET /v1/policies``), as its JSON AST."""
    session, base = opa_session(url, timeout)
    async with session, session.get(f"{base}/v1/policies") as response:
        if response.status != 200:
            raise ValueError(f"OPA answered {response.status}")
        answer = await response.json()
    return [module["ast"] for module in answer["result"]]


def _strings(value: object) -> bool:
    return type(value) is list and all(type(item) is str for item in value)


def read_decision(result: dict[str, Any], decision_id: object = None) -> Decision | None:
    """``Decision.model_validate({**result, "decision_id": decision_id})`` without pydantic's cost.

    Accepts exactly what the model accepts (strict bools, lists of strings, an object for
    ``limits``, a string or null ``decision_id``; other keys ignored) and returns None for anything
    the model would reject. The model itself is built with ``model_construct``: no second check.
    """
    allow = result.get("allow")
    if type(allow) is not bool:
        return None
    values: dict[str, Any] = {"allow": allow, "decision_id": decision_id}
    if decision_id is not None and type(decision_id) is not str:
        return None
    for name in ("require_approval", "report_only"):
        if name in result:
            if type(result[name]) is not bool:
                return None
            values[name] = result[name]
    for name in ("reasons", "redact"):
        if name in result:
            if not _strings(result[name]):
                return None
            values[name] = list(result[name])
    if "limits" in result:
        if type(result["limits"]) is not dict:
            return None
        values["limits"] = result["limits"]
    return Decision.model_construct(**values)


def _unavailable(message: str, reason: str) -> DependencyUnavailable:
    return DependencyUnavailable(message, code="policy_unavailable", reasons=[reason])
