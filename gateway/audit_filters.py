"""Audit filters from strings: the one parser behind ``wardgate audit query`` and the admin API."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime, timezone

from .audit import AuditQuery
from .errors import BadRequest
from .settings import parse_duration

TEXT_FILTERS = ("agent", "user", "tenant", "run", "host", "method", "decision", "kind", "call_id")


def parse_when(value: str, now: float | None = None) -> float:
    """``2h`` (that long ago), ``2026-11-27`` or ``2026-11-27T08:00:00Z`` (ISO 8601, UTC unless
    given) or epoch seconds → epoch seconds."""
    now = time.time() if now is None else now
    text = value.strip()
    try:
        return now - parse_duration(text) if text[-1:].isalpha() else float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"not a time: {value!r} (use e.g. 2h, 7d, 2026-11-27 or 2026-11-27T08:00:00Z)",
                         code="invalid_time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def query_from(params: Mapping[str, str | None], *, limit: int = 100, now: float | None = None) -> AuditQuery:
    """An AuditQuery from string parameters (CLI options or URL query); unknown values refused."""
    values: dict[str, object] = {name: params.get(name) or None for name in TEXT_FILTERS}
    if params.get("status"):
        try:
            values["status"] = int(str(params["status"]))
        except ValueError:
            raise BadRequest("status must be an HTTP status number", code="invalid_status") from None
    values["path_contains"] = params.get("path") or None
    values["since"] = parse_when(str(params["since"]), now) if params.get("since") else None
    values["until"] = parse_when(str(params["until"]), now) if params.get("until") else None
    if params.get("limit"):
        try:
            limit = int(str(params["limit"]))
        except ValueError:
            raise BadRequest("limit must be an integer", code="invalid_limit") from None
    if not 1 <= limit <= 10000:
        raise BadRequest("limit must be between 1 and 10000", code="invalid_limit")
    return AuditQuery(**values, limit=limit)  # type: ignore[arg-type]
