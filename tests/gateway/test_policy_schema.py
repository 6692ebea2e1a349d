"""docs/policy-input.schema.json is generated from the pydantic model and must stay current."""

from __future__ import annotations

import json

from support import REPO
from wardgate.gateway.policy import PolicyInput

SCHEMA = REPO / "docs" / "policy-input.schema.json"


def test_schema_file_is_up_to_date() -> None:
    current = PolicyInput.model_json_schema()
    assert json.loads(SCHEMA.read_text()) == current, (
        "regenerate it: wardgate policy schema > docs/policy-input.schema.json"
    )


def test_schema_names_every_mcp_field() -> None:
    mcp = json.loads(SCHEMA.read_text())["$defs"]["McpInput"]["properties"]
    assert {"method", "tool", "arguments", "server", "kind", "protocol_version", "listing"} <= set(mcp)
