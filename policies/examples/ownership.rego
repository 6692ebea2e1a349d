# Ownership: a user may only touch their own resources.
#
# REST: paths /users/<name>/... and /files/<owner>/... must name the calling user.
# MCP: tools that act on a resource take an "owner" argument, which must be the calling user.
package wardgate.examples.ownership

import rego.v1

default decision := {"allow": false, "reasons": ["not_owner"]}

decision := {"allow": true, "reasons": ["owner"]} if owns

decision := {"allow": true, "reasons": ["not_a_user_resource"]} if {
	not input.mcp
	not user_resource(input.request.path)
}

owns if {
	not input.mcp
	owner_in_path(input.request.path) == input.identity.user
}

owns if {
	input.mcp.method == "tools/call"
	input.mcp.arguments.owner == input.identity.user
}

# A tools/list probe carries no arguments: show the tool, the call itself is checked.
owns if input.mcp.listing

user_resource(path) if {
	parts := split(trim_prefix(path, "/"), "/")
	parts[0] in {"users", "files"}
}

owner_in_path(path) := parts[1] if {
	parts := split(trim_prefix(path, "/"), "/")
	parts[0] in {"users", "files"}
	count(parts) > 1
}
