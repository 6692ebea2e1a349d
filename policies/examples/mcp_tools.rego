# MCP tool allow-lists with argument constraints.
#
# Each tool lists who may call it and, optionally, constraints on its arguments. A tools/list
# probe (input.mcp.listing) carries no arguments, so only the tool and user are checked there:
# the model sees the tool, and each call is still checked in full. `redact` names argument
# fields the audit trail must not keep.
package wardgate.examples.mcp_tools

import rego.v1

tools := {
	"search": {"users": "*"},
	"create_issue": {"users": "*", "repo_prefix": "acme/"},
	"run_sql": {"users": {"alice", "dba-bot"}, "read_only": true},
	"send_email": {"users": "*", "redact": ["body", "auth.password"]},
}

default decision := {"allow": false, "reasons": ["mcp_tool_not_allowed"], "redact": []}

# Calls that are not tool calls (initialize, tools/list, notifications) are allowed here;
# combine with a destination rule for the server itself.
decision := {"allow": true, "reasons": ["not_a_tool_call"], "redact": []} if {
	input.mcp.method != "tools/call"
}

decision := {"allow": true, "reasons": ["mcp_tool_allowed"], "redact": redact} if {
	input.mcp.method == "tools/call"
	count(violations) == 0
	user_may_call
}

decision := {"allow": false, "reasons": sort([v | some v in violations]), "redact": redact} if {
	input.mcp.method == "tools/call"
	count(violations) > 0
	user_may_call
}

tool := tools[input.mcp.tool]

user_may_call if tool.users == "*"

user_may_call if input.identity.user in tool.users

redact := object.get(tool, "redact", [])

violations contains "repo_outside_org" if {
	not input.mcp.listing
	tool.repo_prefix
	not startswith(object.get(input.mcp.arguments, "repo", ""), tool.repo_prefix)
}

violations contains "sql_must_be_read_only" if {
	not input.mcp.listing
	tool.read_only
	not regex.match(`(?i)^\s*select\b[^;]*;?\s*$`, object.get(input.mcp.arguments, "query", ""))
}
