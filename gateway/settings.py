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
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from .errors import ConfigError

ENV_PREFIX = "WARDGATE_"
# Variables that select where configuration lives rather than being part of it.
ENV_LOCATORS = {"WARDGATE_HOME", "WARDGATE_CONFIG"}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: str | float | int) -> float:
    """``"15m"`` → 900.0 seconds; bare numbers are seconds."""
    if isinstance(value, (int, float)):
        return float(value)
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
    connect_timeout: float = 10.0


class AdminSettings(_Section):
    listen: Listener = Listener(port=8081)


class OpaSettings(_Section):
    # "managed": wardgate runs `opa run --server` as a child on loopback, loaded from `paths`.
    # "external": an OPA someone else runs, reached at `url`.
    mode: Literal["managed", "external"] = "managed"
    url: str | None = None
    binary: str = "opa"
    paths: list[Path] = [Path("policies")]
    decision_path: str = "wardgate/authz/decision"
    timeout: float = 0.5
    startup_timeout: float = 15.0

    @field_validator("timeout", "startup_timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)


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

    @field_validator("commit_timeout", "checkpoint_interval", "checkpoint_idle", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)


class DemoSettings(_Section):
    # The embedded default (no config file) turns this on: `wardgate up` then registers a demo
    # agent, starts a tiny echo upstream on loopback and prints a curl line that works on a
    # machine with no internet.
    enabled: bool = False
    echo_listen: Listener = Listener(port=8089)
    agent: str = "demo-agent"
    tenant: str = "demo"
    user: str = "alice"


class Settings(_Section):
    version: Literal[1] = 1
    home: Path = Path(".wardgate")
    proxy: ProxySettings = ProxySettings()
    admin: AdminSettings = AdminSettings()
    opa: OpaSettings = OpaSettings()
    identity: IdentitySettings = IdentitySettings()
    audit: AuditSettings = AuditSettings()
    demo: DemoSettings = DemoSettings()
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
        if not name.startswith(ENV_PREFIX) or name in ENV_LOCATORS:
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
    return settings.model_copy(update={"home": absolute(settings.home, cwd), "opa": opa, "proxy": proxy})
