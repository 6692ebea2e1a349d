"""read_decision (the hand check on OPA's answer) accepts exactly what the Decision model accepts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from wardgate.gateway.policy import Decision, read_decision

RESULTS = [
    {"allow": True},
    {"allow": False, "reasons": ["a", "b"]},
    {"allow": True, "reasons": [], "redact": ["x.y"], "limits": {"rpm": 5}, "require_approval": True,
     "report_only": False, "extra": {"ignored": 1}},
    {"allow": "true"},
    {"allow": 1},
    {"allow": None},
    {"reasons": []},
    {"allow": True, "reasons": "ok"},
    {"allow": True, "reasons": ["ok", 1]},
    {"allow": True, "reasons": None},
    {"allow": True, "redact": [None]},
    {"allow": True, "limits": []},
    {"allow": True, "limits": None},
    {"allow": True, "require_approval": "yes"},
    {"allow": True, "report_only": 0},
    {"allow": True, "report_only": None},
]
DECISION_IDS = [None, "d-1", 7]


@pytest.mark.parametrize("decision_id", DECISION_IDS)
@pytest.mark.parametrize("result", RESULTS)
def test_same_verdict_as_the_model(result: dict[str, object], decision_id: object) -> None:
    try:
        expected: Decision | None = Decision.model_validate({**result, "decision_id": decision_id})
    except ValidationError:
        expected = None
    got = read_decision(result, decision_id)
    if expected is None:
        assert got is None
    else:
        assert got is not None and got.model_dump() == expected.model_dump()
