package wardgate.authz_test

import rego.v1

import data.wardgate.authz

tenants := {"acme": {"allow": [
	{"host": "api.github.com", "methods": ["GET", "POST"], "ports": [443]},
	{"host": "*.example.com", "paths": ["/v1/"]},
]}}

call(tenant, scopes, method, host, port, path) := {
	"version": 1,
	"identity": {"agent": "bot", "user": "alice", "tenant": tenant, "scopes": scopes, "token_id": "t", "issuer": "wardgate"},
	"request": {"method": method, "scheme": "https", "host": host, "port": port, "path": path, "query": {}, "headers": {}},
	"time": {"unix": 0, "rfc3339": "1970-01-01T00:00:00Z", "weekday": 3, "hour": 0},
}

decide(doc) := d if {
	d := authz.decision with input as doc with data.wardgate.config.tenants as tenants
}

test_listed_host_is_allowed if {
	d := decide(call("acme", [], "GET", "api.github.com", 443, "/repos"))
	d.allow == true
	d.reasons == ["destination_allowed"]
}

test_unlisted_host_is_denied if {
	d := decide(call("acme", [], "GET", "evil.test", 443, "/"))
	d.allow == false
	d.reasons == ["destination_not_allowed"]
}

test_wrong_port_is_denied if {
	not decide(call("acme", [], "GET", "api.github.com", 8443, "/")).allow
}

test_write_needs_scope if {
	d := decide(call("acme", [], "POST", "api.github.com", 443, "/repos"))
	d.allow == false
	"write_scope_required" in d.reasons
}

test_write_with_scope_is_allowed if {
	decide(call("acme", ["write"], "POST", "api.github.com", 443, "/repos")).allow
}

test_method_not_listed_is_denied if {
	not decide(call("acme", ["write"], "DELETE", "api.github.com", 443, "/repos")).allow
}

test_wildcard_matches_subdomain_only if {
	decide(call("acme", [], "GET", "api.example.com", 443, "/v1/x")).allow
	not decide(call("acme", [], "GET", "example.com", 443, "/v1/x")).allow
	not decide(call("acme", [], "GET", "badexample.com", 443, "/v1/x")).allow
}

test_path_prefix if {
	not decide(call("acme", [], "GET", "api.example.com", 443, "/v2/x")).allow
}

test_unknown_tenant_is_denied if {
	d := decide(call("nobody", [], "GET", "api.github.com", 443, "/"))
	d.allow == false
	"unknown_tenant" in d.reasons
}

mcp_tenants := {"acme": {
	"allow": [{"host": "mcp.example.com", "methods": ["POST"]}],
	"mcp_tools": [
		{"tool": "search"},
		{"tool": "delete_repo", "users": ["alice"]},
		{"tool": "login", "redact": ["password", "auth.token"]},
	],
}}

mcp_call(user, scopes, mcp) := object.union(call("acme", scopes, "POST", "mcp.example.com", 443, "/mcp"), {
	"identity": {"agent": "bot", "user": user, "tenant": "acme", "scopes": scopes, "token_id": "t", "issuer": "wardgate"},
	"mcp": mcp,
})

decide_mcp(doc) := d if {
	d := authz.decision with input as doc with data.wardgate.config.tenants as mcp_tenants
}

test_mcp_listed_tool_is_allowed_without_write_scope if {
	d := decide_mcp(mcp_call("bob", [], {"method": "tools/call", "tool": "search", "arguments": {"q": "x"}}))
	d == {"allow": true, "reasons": ["destination_allowed"]}
}

test_mcp_response_is_allowed_without_write_scope if {
	# a JSON-RPC response sent to the server has an empty method: still MCP, not a plain POST
	d := decide_mcp(mcp_call("bob", [], {"method": "", "kind": "response"}))
	d == {"allow": true, "reasons": ["destination_allowed"]}
}

test_plain_post_needs_write_scope_where_mcp_does_not if {
	plain := call("acme", [], "POST", "mcp.example.com", 443, "/mcp")
	d := authz.decision with input as plain with data.wardgate.config.tenants as mcp_tenants
	"write_scope_required" in d.reasons
}

test_mcp_unlisted_tool_is_denied if {
	d := decide_mcp(mcp_call("alice", [], {"method": "tools/call", "tool": "drop_tables", "arguments": {}}))
	d.allow == false
	d.reasons == ["mcp_tool_not_allowed"]
}

test_mcp_tool_for_some_users_only if {
	decide_mcp(mcp_call("alice", [], {"method": "tools/call", "tool": "delete_repo", "arguments": {}})).allow
	not decide_mcp(mcp_call("bob", [], {"method": "tools/call", "tool": "delete_repo", "arguments": {}})).allow
}

test_mcp_non_tool_methods_follow_destination_rules if {
	decide_mcp(mcp_call("bob", [], {"method": "tools/list"})).allow
	decide_mcp(mcp_call("bob", [], {"method": "initialize"})).allow
}

test_mcp_redact_names_sensitive_arguments if {
	d := decide_mcp(mcp_call("bob", [], {"method": "tools/call", "tool": "login", "arguments": {"password": "p"}}))
	d.allow == true
	d.redact == ["auth.token", "password"]
}

test_mcp_without_tool_list_allows_any_tool if {
	doc := mcp_call("bob", [], {"method": "tools/call", "tool": "anything", "arguments": {}})
	d := authz.decision with input as doc with data.wardgate.config.tenants as {"acme": {"allow": mcp_tenants.acme.allow}}
	d.allow == true
}

test_report_only_per_tenant if {
	d := authz.decision with input as call("acme", [], "GET", "evil.test", 443, "/")
		with data.wardgate.config.tenants as {"acme": {"allow": [], "report_only": true}}
	d.allow == false
	d.report_only == true
}

test_report_only_per_agent if {
	d := authz.decision with input as call("acme", [], "GET", "evil.test", 443, "/")
		with data.wardgate.config as {"tenants": tenants, "report_only_agents": ["bot"]}
	d.report_only == true
	not decide(call("acme", [], "GET", "evil.test", 443, "/")).report_only
}

test_rule_can_require_approval if {
	d := authz.decision with input as call("acme", ["write"], "POST", "pay.test", 443, "/charge")
		with data.wardgate.config.tenants as {"acme": {"allow": [{"host": "pay.test", "require_approval": true}]}}
	d.allow == true
	d.require_approval == true
	not decide(call("acme", [], "GET", "api.github.com", 443, "/repos")).require_approval
}
