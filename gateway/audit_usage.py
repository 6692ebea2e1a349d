"""Token usage summed from outcome records: who spent how much, per user, agent, tenant, run or model."""

from __future__ import annotations

from typing import Any

from .audit import SCHEMA
from .audit_store import Source, reader, store_exists

GROUPS = ("user", "agent", "tenant", "run", "host", "model")


def usage_report(source: Source, by: str, since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
    """One row per group: calls with usage, input, output and total tokens; largest total first."""
    if by not in GROUPS:
        raise ValueError(f"cannot group by {by!r}")
    if not store_exists(source):
        return []
    clauses, params = ["\"kind\" = 'outcome'", '"usage" IS NOT NULL'], []
    if since is not None:
        clauses.append('"time" >= ?')
        params.append(since)
    if until is not None:
        clauses.append('"time" < ?')
        params.append(until)
    with reader(source, SCHEMA) as (conn, dialect):
        key = dialect.json_text("usage", "model") if by == "model" else f'"{by}"'
        sums = ", ".join(f"COALESCE(SUM({dialect.json_number('usage', name)}), 0) AS {name}"
                         for name in ("input_tokens", "output_tokens", "total_tokens"))
        sql = (f"SELECT {key} AS grp, COUNT(*) AS calls, {sums} FROM audit_records "
               f"WHERE {' AND '.join(clauses)} GROUP BY grp ORDER BY total_tokens DESC, grp")
        rows = conn.execute(dialect.sql(sql), params).fetchall()
    return [{by: row["grp"], **{k: int(row[k]) for k in ("calls", "input_tokens", "output_tokens", "total_tokens")}}
            for row in rows]
