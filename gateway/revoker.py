"""Taking a revocation: store it, audit it, and apply it to this replica's view at once.

Used by the admin API (inside the gateway) and by the CLI when no gateway is running. Every
revocation and every agent status change becomes an audit record of kind ``admin``:
``method`` names the action (``REVOKE``, ``DISABLE`` ...), ``path`` the target
(``token:<jti>``, ``run:<id>``, ``agent:<name>``, ``key:<kid>``), ``reasons`` who and why
(``by:<actor>``, ``why:<reason>``).
"""

from __future__ import annotations

import time

from .audit import AuditRecord
from .audit_writer import AuditLog
from .errors import DependencyUnavailable, WardgateError
from .ids import new_id
from .revocations import Revocation, RevocationKind, RevocationStore, RevocationView, check_revocation


def admin_record(action: str, kind: str, subject: str, actor: str, reason: str) -> AuditRecord:
    record = AuditRecord(
        call_id=new_id(),
        kind="admin",
        method=action,
        path=f"{kind}:{subject}",
        decision=action.lower(),
        reasons=[f"by:{actor}", f"why:{reason}"],
    )
    if kind == "agent":
        record.agent = subject
    elif kind == "token":
        record.token_id = subject
    elif kind == "run":
        record.run = subject
    return record


class Revoker:
    def __init__(
        self, store: RevocationStore, audit: AuditLog, audit_timeout: float, view: RevocationView | None = None
    ) -> None:
        self._store = store
        self._audit = audit
        self._audit_timeout = audit_timeout
        self._view = view

    async def revoke(self, kind: RevocationKind, subject: str, *, actor: str, reason: str = "") -> Revocation:
        check_revocation(kind, subject, reason)
        revocation = await self._store.add(kind, subject, reason, actor, time.time())
        if self._view is not None:
            # Immediate on this replica: the view (and the live connections it closes) is
            # updated before the caller hears back.
            try:
                await self._view.refresh()
            except Exception:  # noqa: BLE001 - the poll retries; the revocation is stored
                self._view.wake()
        await self.record("REVOKE", kind, subject, actor=actor, reason=reason)
        return revocation

    async def record(self, action: str, kind: str, subject: str, *, actor: str, reason: str = "") -> None:
        try:
            await self._audit.commit(admin_record(action, kind, subject, actor, reason), self._audit_timeout)
        except WardgateError:
            raise DependencyUnavailable(
                f"{action.lower()} of {kind} is in effect but its audit record could not be committed",
                code="audit_unavailable",
            ) from None
