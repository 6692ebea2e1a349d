"""Locating the audit store and files from Settings, and the writer process's configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .audit_store import Postgres, Source
from .errors import ConfigError
from .settings import Settings


def audit_source(settings: Settings) -> Source:
    """The configured store: the SQLite file, or the PostgreSQL DSN every replica shares."""
    if settings.audit.backend == "postgres":
        if settings.audit.postgres_dsn is None:
            raise ConfigError("audit.backend is postgres but audit.postgres_dsn is not set", code="config_invalid")
        return Postgres(settings.audit.postgres_dsn.get_secret_value())
    return settings.audit_db


def keys_dir(settings: Settings) -> Path:
    return settings.audit.keys_dir or settings.home / "audit-keys"


def spool_path(settings: Settings) -> Path:
    return settings.audit.spool_file or settings.home / "audit-spool.jsonl"


def writer_config(settings: Settings) -> dict[str, Any]:
    """What the audit writer process needs from Settings, as plain values (audit_child's
    ``writer_from_config``). It is sent over the private socket, so the DSN's password never
    appears on a command line."""
    audit = settings.audit
    source = audit_source(settings)
    return {
        "postgres": source.dsn if isinstance(source, Postgres) else None,
        "sqlite": None if isinstance(source, Postgres) else str(source),
        "spool": str(spool_path(settings)),
        "keys": str(keys_dir(settings)),
        "checkpoint_every": audit.checkpoint_every,
        "checkpoint_interval": audit.checkpoint_interval,
        "checkpoint_idle": audit.checkpoint_idle,
        "sink_file": str(audit.checkpoint_sink_file) if audit.checkpoint_sink_file else None,
        "sink_command": audit.checkpoint_sink_command,
        # The writer gives up on a locked store no later than a caller gives up waiting for it.
        "busy_timeout": audit.commit_timeout,
    }
