# wardgate's decision entry point: data.wardgate.authz.decision
#
# The gateway posts the input document described by `wardgate policy schema` and expects an
# object {allow, reasons}. Anything else (undefined, malformed) is treated as a denial.
#
# This default policy is data-driven: each tenant lists the destinations its agents may call in
# data.wardgate.config.tenants[<tenant>].allow (see ../config/data.json). Calls that change state
# (anything but GET/HEAD/OPTIONS) also need the "write" scope; MCP calls are POSTs by transport,
# so for them the tool rules below decide instead.
#
# MCP: a tenant that lists data.wardgate.config.tenants[<tenant>].mcp_tools allows only those
# tools (tools/call, and the entries tools/list shows), each optionally for some users only and
# with argument fields to redact in the audit trail:
#   {"tool": "create_issue", "users": ["alice"], "redact": ["token"]}
package wardgate.authz

import rego.v1

default decision := {"allow": false, "reasons": ["no_rule_allows"]}

decision := object.union({"allow": false, "reasons": ["no_rule_allows"]}, extras) if {
	count(deny_reasons) == 0
	count(allow_reasons) == 0
}

decision := object.union(object.union({"allow": true, "reasons": sort([r | some r in allow_reasons])}, obligations), extras) if {
	count(deny_reasons) == 0
	count(allow_reasons) > 0
}

# A matching rule with "require_approval": true parks the call until a human approves it.
default obligations := {}

obligations := {"require_approval": true} if {
	some rule in tenant_rules
	rule_matches(rule)
	object.get(rule, "require_approval", false) == true
}

decision := object.union({"allow": false, "reasons": sort([r | some r in deny_reasons])}, extras) if {
	count(deny_reasons) > 0
}

# Obligations that appear only when they say something: redact (MCP argument fields the audit
# trail must not keep) and report_only (log a denial as would_deny, let the call through).
extras := object.union(redact_obligation, report_obligation)

default redact_obligation := {}

redact_obligation := {"redact": redact} if count(redact) > 0

default report_obligation := {}

report_obligation := {"report_only": true} if report_only

read_methods := {"GET", "HEAD", "OPTIONS"}

tenant_rules := object.get(data.wardgate.config.tenants, input.identity.tenant, {"allow": []}).allow

# A rule matches on host (exact, or "*.suffix" which never matches the apex), optional ports,
# methods ("*" for any) and path prefixes.
rule_matches(rule) if {
	host_matches(rule.host, input.request.host)
	port_matches(rule)
	method_matches(rule)
	path_matches(rule)
}

host_matches(pattern, host) if pattern == host

host_matches(pattern, host) if {
	startswith(pattern, "*.")
	suffix := substring(pattern, 1, -1)
	endswith(host, suffix)
	host != substring(pattern, 2, -1)
}

port_matches(rule) if not rule.ports

port_matches(rule) if input.request.port in rule.ports

method_matches(rule) if not rule.methods

method_matches(rule) if "*" in rule.methods

method_matches(rule) if input.request.method in rule.methods

path_matches(rule) if not rule.paths

path_matches(rule) if {
	some prefix in rule.paths
	startswith(input.request.path, prefix)
}

allow_reasons contains "destination_allowed" if {
	some rule in tenant_rules
	rule_matches(rule)
}

deny_reasons contains "write_scope_required" if {
	not input.mcp.method # not an MCP call (every MCP input has a method); keeps the arguments out of the decision cache's key
	not input.request.method in read_methods
	not "write" in input.identity.scopes
}

tenant_tools := object.get(data.wardgate.config.tenants, [input.identity.tenant, "mcp_tools"], [])

tools_listed if data.wardgate.config.tenants[input.identity.tenant].mcp_tools

tool_rule_matches(rule) if {
	rule.tool == input.mcp.tool
	user_matches(rule)
}

user_matches(rule) if not rule.users

user_matches(rule) if input.identity.user in rule.users

deny_reasons contains "mcp_tool_not_allowed" if {
	input.mcp.method == "tools/call"
	tools_listed
	not any_tool_rule_matches
}

any_tool_rule_matches if {
	some rule in tenant_tools
	tool_rule_matches(rule)
}

# Argument fields the audit trail must not keep (dot paths into mcp.arguments).
redact := sort([field |
	input.mcp.method == "tools/call"
	some rule in tenant_tools
	tool_rule_matches(rule)
	some field in object.get(rule, "redact", [])
])

deny_reasons contains "destination_not_allowed" if {
	count(allow_reasons) == 0
	count(tenant_rules) > 0
}

deny_reasons contains "unknown_tenant" if {
	not data.wardgate.config.tenants[input.identity.tenant]
}

# Report mode, for rolling out a stricter policy: a denial is logged as `would_deny` and the call
# proceeds. Per tenant (tenants[<t>].report_only = true) or per agent (report_only_agents).
default report_only := false

report_only if data.wardgate.config.tenants[input.identity.tenant].report_only == true

report_only if input.identity.agent in object.get(data.wardgate.config, "report_only_agents", [])
