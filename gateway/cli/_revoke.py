"""Revocation from the command line: through the running gateway if there is one, else locally.

Through the gateway (its admin API, found via ``<home>/run/listeners.json``), the revocation is
stored, audited and applied to that gateway's view before the command returns, so its next
request is already refused and its live connections are closed. With no gateway running, the
command writes the store and the audit log itself; gateways pick it up on their next poll
(PostgreSQL replicas also get a NOTIFY).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import urllib.error
import urllib.request
from typing import Any

from ..audit_writer import AuditWriter
from ..errors import WardgateError
from ..revocations import RevocationKind, open_store
from ..revoker import Revoker, admin_record
from ..settings import Settings

ADMIN_TIMEOUT = 5.0


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no user name (containers): still say it came from the CLI
        return "cli"


class _GatewayError(WardgateError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, code=code)
        self.status = status  # type: ignore[misc]


def call_gateway(settings: Settings, method: str, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """POST to the local gateway's admin API; ``None`` when no gateway answers."""
    listeners = settings.run_dir / "listeners.json"
    token_file = settings.home / "admin.token"
    if not listeners.exists():
        return None
    admin = json.loads(listeners.read_text()).get("admin")
    token = settings.admin_token.get_secret_value() if settings.admin_token else (
        token_file.read_text().strip() if token_file.exists() else None)
    if not admin or not token:
        return None
    request = urllib.request.Request(
        f"http://{admin}{path}", data=json.dumps(body).encode(), method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=ADMIN_TIMEOUT) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        try:
            detail = json.loads(error.read())["error"]
        except (ValueError, KeyError, TypeError):
            detail = {"code": "admin_error", "message": f"admin API answered {error.code}"}
        raise _GatewayError(error.code, detail["code"], detail["message"]) from None
    except (urllib.error.URLError, OSError):
        return None  # a stale listeners.json: the gateway is gone


async def _revoke_locally(settings: Settings, kind: RevocationKind, subject: str, reason: str) -> dict[str, Any]:
    url = settings.state.url.get_secret_value() if settings.state.url else None
    store = open_store(url, settings.state_db, settings.revocation.timeout)
    await store.open()
    audit = AuditWriter(settings.audit_db)
    audit.start()
    try:
        revocation = await Revoker(store, audit, settings.audit.commit_timeout).revoke(
            kind, subject, actor=actor(), reason=reason
        )
    finally:
        await audit.stop()
        await store.close()
    return revocation.as_dict()


def revoke(settings: Settings, kind: RevocationKind, subject: str, reason: str) -> tuple[dict[str, Any], bool]:
    """→ (the revocation, whether a running gateway took it)."""
    body = {"kind": kind, "subject": subject, "reason": reason, "actor": actor()}
    answered = call_gateway(settings, "POST", "/v1/revocations", body)
    if answered is not None:
        return answered, True
    return asyncio.run(_revoke_locally(settings, kind, subject, reason)), False


async def record_locally(settings: Settings, action: str, kind: str, subject: str, reason: str) -> None:
    audit = AuditWriter(settings.audit_db)
    audit.start()
    try:
        await audit.commit(admin_record(action, kind, subject, actor(), reason), settings.audit.commit_timeout)
    finally:
        await audit.stop()


def describe(revocation: dict[str, Any], through_gateway: bool) -> str:
    where = "enforced by the running gateway now" if through_gateway else "stored; gateways enforce it on their next poll"
    return f"revoked {revocation['kind']} {revocation['subject']} (revision {revocation['revision']}; {where})"
