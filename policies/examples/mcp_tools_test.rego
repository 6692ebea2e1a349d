package wardgate.examples.mcp_tools_test

import rego.v1

import data.wardgate.examples.mcp_tools

call(user, tool, arguments) := {"identity": {"user": user}, "mcp": {"method": "tools/call", "tool": tool, "arguments": arguments}}

probe(user, tool) := {"identity": {"user": user}, "mcp": {"method": "tools/call", "tool": tool, "listing": true}}

test_unknown_tool_is_denied if {
	d := mcp_tools.decision with input as call("alice", "drop_database", {})
	d.reasons == ["mcp_tool_not_allowed"]
}

test_repo_constraint if {
	mcp_tools.decision.allow with input as call("bob", "create_issue", {"repo": "acme/app", "title": "x"})
	d := mcp_tools.decision with input as call("bob", "create_issue", {"repo": "evil/app", "title": "x"})
	d.allow == false
	d.reasons == ["repo_outside_org"]
}

test_sql_is_read_only_and_for_some_users if {
	mcp_tools.decision.allow with input as call("alice", "run_sql", {"query": "SELECT * FROM t"})
	not mcp_tools.decision.allow with input as call("alice", "run_sql", {"query": "SELECT 1; DROP TABLE t"})
	not mcp_tools.decision.allow with input as call("bob", "run_sql", {"query": "SELECT 1"})
}

test_listing_ignores_arguments_but_not_users if {
	mcp_tools.decision.allow with input as probe("bob", "create_issue")
	mcp_tools.decision.allow with input as probe("alice", "run_sql")
	not mcp_tools.decision.allow with input as probe("bob", "run_sql")
}

test_redact_sensitive_fields if {
	d := mcp_tools.decision with input as call("bob", "send_email", {"to": "x", "body": "secret", "auth": {"password": "p"}})
	d.allow == true
	d.redact == ["body", "auth.password"]
}

test_other_methods_pass if {
	mcp_tools.decision.allow with input as {"identity": {"user": "bob"}, "mcp": {"method": "tools/list"}}
}
