"""Building the audit writer and locating its files from Settings, in one place."""

from __future__ import annotations

from pathlib import Path

from .audit import AuditWriter, CheckpointPolicy
from .audit_checkpoint import CheckpointSink
from .audit_keys import load_or_create_signer
from .audit_spool import Spool
from .settings import Settings


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
    return AuditWriter(settings.audit_db, checkpoints=policy, spool=Spool(spool_path(settings)),
                       busy_timeout=audit.commit_timeout)
