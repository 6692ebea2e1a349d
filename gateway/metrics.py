"""Prometheus metrics in the text exposition format, fed by the audit records every call produces.

Every call ends in exactly one ``outcome`` or ``refusal`` record, so counting those (rather than
instrumenting each addon) counts every call once, including the ones refused before a decision.
Everything here runs on the event loop thread; no locks needed.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .audit import AuditRecord

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds
        self.n += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip((*BUCKETS, float("inf")), self.counts):
            running += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f'{name}_bucket{{{labels},le="{le}"}} {running}')
        out.append(f"{name}_sum{{{labels}}} {self.total}")
        out.append(f"{name}_count{{{labels}}} {self.n}")
        return out


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


class Metrics:
    def __init__(self) -> None:
        self.calls: dict[tuple[str, str], int] = defaultdict(int)
        self.opa_errors: dict[str, int] = defaultdict(int)
        self.stages: dict[str, Histogram] = defaultdict(Histogram)

    def observe_record(self, record: "AuditRecord") -> None:
        if record.kind not in ("outcome", "refusal"):
            return
        status = str(record.status) if record.status is not None else (record.error or "none")
        self.calls[(record.decision or "none", status)] += 1
        if record.error == "policy_unavailable":
            self.opa_errors[record.reasons[0] if record.reasons else "unknown"] += 1
        for stage, value in (("policy", record.latency_policy_ms), ("upstream", record.latency_upstream_ms),
                             ("total", record.latency_total_ms)):
            if value is not None:
                self.stages[stage].observe(value / 1000)

    def observe_commit(self, seconds: float) -> None:
        self.stages["audit_commit"].observe(seconds)

    def render(self, gauges: dict[str, tuple[str, str, float]]) -> str:
        """The exposition text; ``gauges`` adds name → (type, help, value) read at scrape time."""
        lines = ["# HELP wardgate_calls_total Calls by policy decision and final status (or error code).",
                 "# TYPE wardgate_calls_total counter"]
        for (decision, status), count in sorted(self.calls.items()):
            lines.append(f'wardgate_calls_total{{decision="{_label(decision)}",status="{_label(status)}"}} {count}')
        lines += ["# HELP wardgate_opa_errors_total Decisions OPA could not give (timeout, unreachable, undefined, malformed).",
                  "# TYPE wardgate_opa_errors_total counter"]
        for reason, count in sorted(self.opa_errors.items()):
            lines.append(f'wardgate_opa_errors_total{{reason="{_label(reason)}"}} {count}')
        lines += ["# HELP wardgate_stage_latency_seconds Latency per stage: policy, upstream, total, audit_commit.",
                  "# TYPE wardgate_stage_latency_seconds histogram"]
        for stage, histogram in sorted(self.stages.items()):
            lines += histogram.lines("wardgate_stage_latency_seconds", f'stage="{_label(stage)}"')
        for name, (kind, help_text, value) in gauges.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return "\n".join(lines) + "\n"
