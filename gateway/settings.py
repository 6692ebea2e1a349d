"""Typed configuration: one pydantic model tree, built once at the entry point and passed down.

Precedence: command line over environment (``WARDGATE_<SECTION>__<KEY>``) over ``wardgate.toml``
over defaults. Unknown keys anywhere are refused with a "did you mean" hint, because a misspelt
security setting that is silently ignored is worse than a refusal to start.

The config format is versioned (``version = 1``) so later formats can be told apart.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .opa_address import unix_socket

ENV_PREFIX = "WARDGATE_"
# Variables that select where configuration lives rather than being part of it.
ENV_LOCATORS = {"WARDGATE_HOME", "WARDGATE_CONFIG"}
# Reserved for the test harness (e.g. WARDGATE_TEST_PG_DSN set by scripts/postgres.sh).
ENV_RESERVED_PREFIX = "WARDGATE_TEST_"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: str | float | int) -> float:
    """``"15m"`` → 900.0 seconds; bare numbers are seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):  # a list or table in the TOML: a clear error, not a TypeError
        raise ValueError(f"not a duration: {value!r} (use e.g. 500ms, 30s, 15m, 1h)")
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 500ms, 30s, 15m, 1h)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` or ``"[::1]:0"`` → (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"listen address must be HOST:PORT, got {value!r}")
    number = int(port)
    if number > 65535:
        raise ValueError(f"port out of range in {value!r}")
    return host.strip("[]"), number


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Listener(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class ProxySettings(_Section):
    listen: Listener = Listener(port=8080)
    # Upstream TLS is always verified; this adds a CA bundle to trust (tests, internal PKI).
    upstream_ca_file: Path | None = None


class EgressSettings(_Section):
    # Internal ranges (CIDR) the proxy may reach although they are loopback/private/etc.
    # Cloud-metadata addresses stay refused whatever is listed here.
    unsafe_allow_ranges: list[str] = []
    resolve_timeout: float = 5.0
    # How long a name's addresses are reused (each use checks them again); 0: resolve every call.
    resolve_cache: float = Field(default=30.0, ge=0, le=3600)

    @field_validator("unsafe_allow_ranges")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value

    @field_validator("resolve_timeout", "resolve_cache", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)


class LimitsSettings(_Section):
    """What one client may send and hold open, and how long an upstream may take (docs/hardening.md)."""

    max_header_bytes: int = Field(default=32768, ge=1024, le=1 << 20)  # request line + headers → 431
    max_headers: int = Field(default=100, ge=8, le=1000)  # header fields → 431
    max_body_bytes: int = Field(default=10 << 20, ge=1024)  # request body → 413, checked as it arrives
    # One WebSocket message, either way, as collected (inflated) → close 1009, websocket_message_too_big.
    max_websocket_message_bytes: int = Field(default=16 << 20, ge=1024)
    header_timeout: float = Field(default=10.0, gt=0, le=300)  # first byte of a request to end of its head
    # End of a request's head to end of its body → 408 request_timeout; nothing is sent upstream.
    body_timeout: float = Field(default=60.0, gt=0, le=3600)
    idle_timeout: float = Field(default=300.0, gt=0)  # a connection or tunnel waiting for its next request
    max_tunnels_per_agent: int = Field(default=64, ge=1)  # open CONNECT tunnels → 429
    requests_per_second: float = Field(default=50.0, gt=0)  # per agent, token bucket → 429 + Retry-After
    burst: int = Field(default=100, ge=1)
    # The TCP connect to an upstream must complete within this → 504 upstream_connect_timeout.
    connect_timeout: float = Field(default=10.0, gt=0, le=300)
    # An upstream must send its response head, and then a buffered body, within this → 504 upstream_timeout.
    upstream_timeout: float = Field(default=60.0, gt=0)
    # A response body larger than this (announced, or of unknown length once this much has arrived)
    # is relayed as it arrives instead of buffered whole; calls carrying a credential use their
    # service's inspection_limit instead (proxy/large_responses.py).
    response_buffer_bytes: int = Field(default=1 << 20, ge=1024)

    @field_validator("header_timeout", "body_timeout", "idle_timeout", "connect_timeout", "upstream_timeout",
                     mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)


class AdminSettings(_Section):
    listen: Listener = Listener(port=8081)


class OpaSettings(_Section):
    # "managed": wardgate runs `opa run --server` as a child on a Unix socket in its private run
    # folder, loaded from `paths`. "external": an OPA someone else runs, reached at `url`:
    # http://host:port, https://host:port, or unix:///path/to/opa.sock (gateway/opa_address.py).
    mode: Literal["managed", "external"] = "managed"
    url: str | None = None
    binary: str = "opa"
    paths: list[Path] = [Path("policies")]
    decision_path: str = "wardgate/authz/decision"
    timeout: float = 0.5
    startup_timeout: float = 15.0
    # Managed mode: how often policy files are checked for changes (0 = only on SIGHUP or
    # `wardgate policy reload`). A change that does not compile is rejected; the old policy stays.
    watch_interval: float = 1.0
    # Managed mode: the OS threads OPA runs Go code on (its GOMAXPROCS). Unset: GOMAXPROCS from
    # wardgate's environment if there is one, else one per two proxy workers, at most one per CPU.
    threads: int | None = Field(default=None, ge=1, le=1024)
    # Managed mode: how many decisions to reuse for calls that agree on every input field the policy
    # reads (gateway/decision_cache.py, docs/policy.md); 0 = ask OPA for every call.
    decision_cache: int = Field(default=4096, ge=0, le=1_000_000)

    @field_validator("timeout", "startup_timeout", "watch_interval", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("url")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        socket = unix_socket(value)
        if socket is not None:
            if not socket.startswith("/") or len(socket) == 1:
                raise ValueError(f"a unix:// address names the socket's absolute path (unix:///run/opa.sock), got {value!r}")
            return value
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            parts = parts._replace(netloc="")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected http://host:port, https://host:port or unix:///path/to/socket, got {value!r}")
        return value


class IdentitySettings(_Section):
    issuer: str = "wardgate"
    audience: str = "wardgate-proxy"
    default_ttl: float = 900.0
    max_ttl: float = 3600.0
    leeway: float = Field(default=30.0, ge=0, le=120)
    max_token_bytes: int = Field(default=8192, ge=512, le=65536)

    @field_validator("default_ttl", "max_ttl", "leeway", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)


class AuditSettings(_Section):
    # How long an allowed call may wait for its intent record to be durably committed.
    commit_timeout: float = 2.0
    # While one or two calls wait for that commit and the proxy has nothing else to do, its loop polls
    # for up to this long instead of sleeping (proxy/polling_selector.py); 0 turns it off.
    commit_poll: float = Field(default=0.002, ge=0, le=0.1)
    # Signed checkpoints over each writer's chain: every N records, every T seconds while records
    # arrive, and after `checkpoint_idle` without any (see docs/audit.md).
    checkpoint_every: int = Field(default=1000, ge=1)
    checkpoint_interval: float = 10.0
    checkpoint_idle: float = 1.0
    # The checkpoint signing key lives outside the database (default <home>/audit-keys).
    keys_dir: Path | None = None
    # External checkpoint sinks the database cannot rewrite: a file on another path, a command
    # (argv list; gets one JSON line on stdin per checkpoint).
    checkpoint_sink_file: Path | None = None
    checkpoint_sink_command: list[str] | None = None
    # Outcomes the store could not take are fsync'd here and replayed (default <home>/audit-spool.jsonl).
    spool_file: Path | None = None
    # "sqlite": <home>/audit.db. "postgres": several replicas share `postgres_dsn`, one chain each.
    backend: Literal["sqlite", "postgres"] = "sqlite"
    postgres_dsn: SecretStr | None = None

    @field_validator("commit_timeout", "commit_poll", "checkpoint_interval", "checkpoint_idle", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)


class StateSettings(_Section):
    # Where shared state lives. Empty: the SQLite files under `home` (one machine).
    # "postgresql://user@host/db": revocations are shared by every replica on that database.
    url: SecretStr | None = None


class RevocationSettings(_Section):
    # The view is refreshed at least this often (PostgreSQL NOTIFY wakes it sooner).
    poll_interval: float = Field(default=0.25, gt=0, le=60)
    # Longer than this without a successful refresh: refuse calls (503 revocation_unavailable).
    max_staleness: float = Field(default=3.0, gt=0, le=300)
    # Bound on each call into the revocation store.
    timeout: float = Field(default=1.0, gt=0, le=30)

    @field_validator("poll_interval", "max_staleness", "timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)


class IdempotencySettings(_Section):
    # How long a stored response answers retries with the same Idempotency-Key.
    ttl: float = 86400.0
    # How long a retry waits for the first attempt still in flight before answering 409.
    in_flight_wait: float = 10.0
    # Responses larger than this are not stored; retries then get 409 idempotency_outcome_unknown.
    max_response_bytes: int = Field(default=1 << 20, ge=0)
    # A keyed request is sent upstream by the gateway itself (proxy/exchange.py): its time limits.
    connect_timeout: float = 10.0
    upstream_timeout: float = 300.0

    @field_validator("ttl", "in_flight_wait", "connect_timeout", "upstream_timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)


class ApprovalSettings(_Section):
    # How long a parked call waits for a decision before its approval expires.
    ttl: float = 86400.0

    @field_validator("ttl", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)


class McpSettings(_Section):
    # POSTs to these URL prefixes are MCP whatever their headers say ("https://mcp.example.com/mcp").
    # Others are recognised by MCP headers or by a JSON-RPC body calling an MCP method.
    servers: list[str] = []
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    max_depth: int = Field(default=64, ge=4, le=512)
    # How many tools/list entries are checked against the policy at once.
    list_concurrency: int = Field(default=16, ge=1, le=256)
EXTERNAL_ALGORITHMS = ("EdDSA", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512")


class TrustedIssuer(_Section):
    """An external identity provider (OIDC, SPIFFE JWT-SVID) trusted by issuer + JWKS."""

    issuer: str  # exact `iss`
    jwks: str  # https URL or a file path
    audience: str  # exact, single-valued `aud`
    algorithms: list[str] = ["EdDSA", "ES256", "RS256"]
    # Accepted `typ` header values; "" accepts a token without one (JWT-SVIDs often omit it).
    token_types: list[str] = ["at+jwt"]
    # Claim mapping (dotted paths into the claims): who is the agent, the user, the tenant.
    agent_claim: str = "act.sub"
    agent_prefix: str = ""  # e.g. "spiffe://example.org/agent/": required, then stripped
    user_claim: str = "sub"
    tenant_claim: str | None = None
    tenant: str | None = None  # fixed tenant when the issuer has no tenant claim
    scope_claim: str = "scope"
    refresh_interval: float = 300.0
    refetch_min_interval: float = 30.0  # an unknown kid triggers at most one fetch per this interval
    max_age: float = 3600.0  # the last good key set is used up to this age, then calls fail closed
    fetch_timeout: float = 5.0
    unsafe_allow_http: bool = False  # plain-http JWKS URL (tests, loopback only)

    @field_validator("refresh_interval", "refetch_min_interval", "max_age", "fetch_timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        refused = [a for a in value if a not in EXTERNAL_ALGORITHMS]
        if refused or not value:
            raise ValueError(f"algorithms must be a non-empty subset of {', '.join(EXTERNAL_ALGORITHMS)} (never none or HMAC)")
        return value


class DemoSettings(_Section):
    # The embedded default (no config file) turns this on: `wardgate up` then registers a demo
    # agent, starts a tiny echo upstream on loopback and prints a curl line that works on a
    # machine with no internet.
    enabled: bool = False
    echo_listen: Listener = Listener(port=8089)
    agent: str = "demo-agent"
    tenant: str = "demo"
    user: str = "alice"


_SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_HOST_PATTERN = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


class OAuthClientSettings(_Section):
    """An authorization server for ``wardgate creds connect`` (authorization code + PKCE)."""

    authorization_endpoint: str
    token_endpoint: str
    client_id: str
    client_secret: SecretStr | None = None  # public clients rely on PKCE alone
    scopes: list[str] = []
    # Where the authorization server sends the user back; default: the admin API's /oauth/callback
    # at the address the CLI reached it on.
    redirect_uri: str | None = None

    @field_validator("authorization_endpoint", "token_endpoint")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("OAuth endpoints must be https:// URLs")
        return value


class ServiceSettings(_Section):
    """One ``[services.NAME]`` table: where a credential may go and how it is applied.

    ``hosts`` are exact names or ``*.suffix`` (which never matches the apex). Injection happens
    only over HTTPS to one of ``ports`` (443 unless the operator lists others). ``mechanism``:

    - ``header``    ``header`` set to ``template`` with ``{token}`` replaced (``Bearer {token}``)
    - ``basic``     ``Authorization: Basic base64(secret)``, the stored secret being ``user:password``
    - ``query``     the query parameter ``query_param`` set to the secret
    - ``assertion`` a JWT minted per call by wardgate (no stored secret), in ``header``/``template``

    ``mode = "placeholder"`` injects only where the agent sent the marker ``wardgate:NAME``.
    """

    hosts: list[str] = Field(min_length=1)
    ports: list[int] = [443]
    mechanism: Literal["header", "basic", "query", "assertion"] = "header"
    header: str = "Authorization"
    template: str = "Bearer {token}"
    query_param: str | None = None
    mode: Literal["inject", "placeholder"] = "inject"
    # Extra agent-supplied headers and cookies to remove on bound calls (the credential header is
    # always removed).
    strip_headers: list[str] = []
    strip_cookies: list[str] = []
    # Responses larger than this are not buffered for scrubbing; for a sensitive service they are
    # refused instead (``response_uninspectable``).
    sensitive: bool = False
    inspection_limit: int = Field(default=4 << 20, ge=1024)
    audience: str | None = None  # assertion audience; defaults to the service name
    assertion_ttl: float = Field(default=60.0, gt=0, le=900)
    # OAuth grants are refreshed this long before they expire.
    refresh_skew: float = Field(default=60.0, ge=0)
    oauth: OAuthClientSettings | None = None

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        lowered = [h.lower().rstrip(".") for h in hosts]
        for host in lowered:
            if not _HOST_PATTERN.match(host) or host.count("*") > 1:
                raise ValueError(f"host {host!r} must be a name or *.suffix")
        return lowered

    @field_validator("ports")
    @classmethod
    def _ports(cls, ports: list[int]) -> list[int]:
        if not ports or any(not 0 < p <= 65535 for p in ports):
            raise ValueError("ports must be a non-empty list of ports 1-65535")
        return ports

    @field_validator("header", "strip_headers")
    @classmethod
    def _header_names(cls, value: str | list[str]) -> str | list[str]:
        for name in [value] if isinstance(value, str) else value:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a header name")
        return value

    @field_validator("assertion_ttl", "refresh_skew", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @model_validator(mode="after")
    def _mechanism(self) -> "ServiceSettings":
        if self.mechanism in ("header", "assertion") and "{token}" not in self.template:
            raise ValueError("template must contain {token}")
        if self.mechanism == "query" and not self.query_param:
            raise ValueError("mechanism 'query' needs query_param")
        if self.mechanism == "assertion" and self.mode == "placeholder":
            raise ValueError("assertions are minted per call; placeholder mode does not apply")
        return self


class VaultSettings(_Section):
    # The master keys: ``master_key`` (e.g. from WARDGATE_VAULT__MASTER_KEY, "kid:base64,..." with
    # the first one active) or else ``master_key_file`` (default <home>/vault.keys, mode 0600).
    master_key: SecretStr | None = None
    master_key_file: Path | None = None


class BenchSettings(_Section):
    # Benchmarks only (bench/run.py): stages the proxy skips so the cost of each one shows. Empty by
    # default; every skipped stage is logged as a warning at start-up. Never set this in production:
    # "identity" trusts unverified tokens, "policy" allows everything, "audit" records nothing.
    unsafe_skip_stages: list[Literal["identity", "policy", "injection", "audit", "scrubbing"]] = []


class Settings(_Section):
    version: Literal[1] = 1
    home: Path = Path(".wardgate")
    proxy: ProxySettings = ProxySettings()
    egress: EgressSettings = EgressSettings()
    limits: LimitsSettings = LimitsSettings()
    admin: AdminSettings = AdminSettings()
    opa: OpaSettings = OpaSettings()
    identity: IdentitySettings = IdentitySettings()
    audit: AuditSettings = AuditSettings()
    demo: DemoSettings = DemoSettings()
    state: StateSettings = StateSettings()
    revocation: RevocationSettings = RevocationSettings()
    idempotency: IdempotencySettings = IdempotencySettings()
    approvals: ApprovalSettings = ApprovalSettings()
    mcp: McpSettings = McpSettings()
    trusted_issuers: list[TrustedIssuer] = []
    services: dict[str, ServiceSettings] = {}
    vault: VaultSettings = VaultSettings()
    bench: BenchSettings = BenchSettings()
    admin_token: SecretStr | None = None

    @property
    def state_db(self) -> Path:
        return self.home / "state.db"

    @property
    def audit_db(self) -> Path:
        return self.home / "audit.db"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def ca_dir(self) -> Path:
        return self.home / "ca"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def vault_key_file(self) -> Path:
        return self.vault.master_key_file or self.home / "vault.keys"


def _hint(unknown: str, known: list[str]) -> str:
    close = difflib.get_close_matches(unknown, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_unknown(model: type[BaseModel], data: Mapping[str, Any], where: str) -> None:
    """Refuse unknown keys with a hint before pydantic's less friendly message."""
    fields = model.model_fields
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(
                f"unknown setting {where}{key!r}{_hint(key, list(fields))}", code="config_unknown_key"
            )
        annotation = fields[key].annotation
        if isinstance(value, Mapping) and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _check_unknown(annotation, value, f"{where}{key}.")
        elif isinstance(value, Mapping) and typing.get_origin(annotation) is dict:
            # Named tables such as [services.NAME]: check each entry against the value model.
            item = typing.get_args(annotation)[1]
            for name, entry in value.items():
                if isinstance(entry, Mapping) and isinstance(item, type) and issubclass(item, BaseModel):
                    _check_unknown(item, entry, f"{where}{key}.{name}.")


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """``WARDGATE_PROXY__LISTEN__PORT=9000`` → {"proxy": {"listen": {"port": "9000"}}}."""
    tree: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in ENV_LOCATORS or name.startswith(ENV_RESERVED_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX):].split("__")]
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        if path[-1] == "paths":
            node[path[-1]] = [p for p in value.split(os.pathsep) if p]
        else:
            node[path[-1]] = value
    return tree


def _listen_override(value: str) -> dict[str, Any]:
    host, port = parse_listen(value)
    return {"host": host, "port": port}


def load_settings(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Build the one Settings object: defaults < wardgate.toml < environment < overrides.

    ``config_file`` defaults to ``$WARDGATE_CONFIG`` or ``wardgate.toml`` in the working
    directory, used only if it exists. ``home`` defaults to ``$WARDGATE_HOME`` or ``.wardgate``.
    Relative paths in the file are resolved against the file's folder; all others against ``cwd``.
    """
    environ = os.environ if environ is None else environ
    cwd = cwd or Path.cwd()
    data: dict[str, Any] = {}
    base = cwd
    explicit = config_file or (Path(environ["WARDGATE_CONFIG"]) if environ.get("WARDGATE_CONFIG") else None)
    candidate = explicit or cwd / "wardgate.toml"
    if explicit and not candidate.exists():
        raise ConfigError(f"config file not found: {candidate}", code="config_not_found")
    if candidate.exists():
        try:
            data = tomllib.loads(candidate.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{candidate}: not valid TOML: {exc}", code="config_syntax") from None
        base = candidate.resolve().parent
    if environ.get("WARDGATE_HOME"):
        data["home"] = environ["WARDGATE_HOME"]
    data = _merge(data, _from_env(environ))
    flat = dict(overrides or {})
    for key in ("proxy_listen", "admin_listen"):
        if flat.get(key):
            section = key.split("_")[0]
            data = _merge(data, {section: {"listen": _listen_override(flat.pop(key))}})
        else:
            flat.pop(key, None)
    data = _merge(data, flat)
    _check_unknown(Settings, data, "")
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"invalid setting {where}: {first['msg']}") from None
    return _resolve_paths(settings, base, cwd)


def _resolve_paths(settings: Settings, base: Path, cwd: Path) -> Settings:
    def absolute(path: Path, root: Path) -> Path:
        return path if path.is_absolute() else (root / path).resolve()

    opa = settings.opa.model_copy(update={"paths": [absolute(p, base) for p in settings.opa.paths]})
    proxy = settings.proxy
    if proxy.upstream_ca_file is not None:
        proxy = proxy.model_copy(update={"upstream_ca_file": absolute(proxy.upstream_ca_file, base)})
    for name in settings.services:
        if not _SERVICE_NAME.match(name):
            raise ConfigError(f"service name {name!r} must be lowercase letters, digits, '.', '_' or '-'",
                              code="config_invalid")
    vault = settings.vault
    if vault.master_key_file is not None:
        vault = vault.model_copy(update={"master_key_file": absolute(vault.master_key_file, base)})
    return settings.model_copy(
        update={"home": absolute(settings.home, cwd), "opa": opa, "proxy": proxy, "vault": vault}
    )
