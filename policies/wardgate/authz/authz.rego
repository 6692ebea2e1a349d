# wardgate's decision entry point: data.wardgate.authz.decision
#
# The gateway posts the input document described by `wardgate policy schema` and expects an
# object {allow, reasons}. Anything else (undefined, malformed) is treated as a denial.
#
# This default policy is data-driven: each tenant lists the destinations its agents may call in
# data.wardgate.config.tenants[<tenant>].allow (see ../config/data.json). Calls that change state
# (anything but GET/HEAD/OPTIONS) also need the "write" scope.
package wardgate.authz

import rego.v1

default decision := {"allow": false, "reasons": ["no_rule_allows"]}

decision := object.union({"allow": true, "reasons": sort([r | some r in allow_reasons])}, obligations) if {
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

decision := {"allow": false, "reasons": sort([r | some r in deny_reasons])} if {
	count(deny_reasons) > 0
}

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
	not input.request.method in read_methods
	not "write" in input.identity.scopes
}

deny_reasons contains "destination_not_allowed" if {
	count(allow_reasons) == 0
	count(tenant_rules) > 0
}

deny_reasons contains "unknown_tenant" if {
	not data.wardgate.config.tenants[input.identity.tenant]
}
