"""Building the audit writer and locating its files from Settings, in one place."""

from __future__ import annotations

from pathlib import Path

from .audit_checkpoint import CheckpointSink
from .audit_keys import load_or_create_signer
from .audit_spool import Spool
from .audit_store import Postgres, Source
from .audit_writer import AuditWriter, CheckpointPolicy
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


def build_writer(settings: Settings) -> AuditWriter:
    audit = settings.audit
    sink = None
    if audit.checkpoint_sink_file or audit.checkpoint_sink_command:
        sink = CheckpointSink(audit.checkpoint_sink_file, audit.checkpoint_sink_command)
    policy = CheckpointPolicy(
        load_or_create_signer(keys_dir(settings)),
        every=audit.checkpoint_every,
        interval=audit.checkpoint_interval,
        idle=audit.checkpoint_idle,
        sink=sink,
    )
    # The writer gives up on a locked store no later than a caller gives up waiting for it.
    return AuditWriter(audit_source(settings), checkpoints=policy, spool=Spool(spool_path(settings)),
                       busy_timeout=audit.commit_timeout)
