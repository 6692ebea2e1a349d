"""Token usage summed from outcome records: who spent how much, per user, agent, tenant, run or model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .audit import SCHEMA
from .sqlite import connect

GROUPS = {
    "user": "user", "agent": "agent", "tenant": "tenant", "run": "run", "host": "host",
    "model": "json_extract(usage, '$.model')",
}


def usage_report(path: Path, by: str, since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
    """One row per group: calls with usage, input, output and total tokens; largest total first."""
    if by not in GROUPS:
        raise ValueError(f"cannot group by {by!r}")
    if not path.exists():
        return []
    clauses, params = ["kind = 'outcome'", "usage IS NOT NULL"], []
    if since is not None:
        clauses.append("time >= ?")
        params.append(since)
    if until is not None:
        clauses.append("time < ?")
        params.append(until)
    sql = (
        f"SELECT {GROUPS[by]} AS key, COUNT(*) AS calls, "
        "COALESCE(SUM(json_extract(usage, '$.input_tokens')), 0) AS input_tokens, "
        "COALESCE(SUM(json_extract(usage, '$.output_tokens')), 0) AS output_tokens, "
        "COALESCE(SUM(json_extract(usage, '$.total_tokens')), 0) AS total_tokens "
        f"FROM audit_records WHERE {' AND '.join(clauses)} GROUP BY key ORDER BY total_tokens DESC, key"
    )
    conn = connect(path, schema=SCHEMA)
    try:
        return [{by: row["key"], **{k: row[k] for k in ("calls", "input_tokens", "output_tokens", "total_tokens")}}
                for row in conn.execute(sql, params)]
    finally:
        conn.close()
