package wardgate.examples.ownership_test

import rego.v1

import data.wardgate.examples.ownership

rest(user, path) := {"identity": {"user": user}, "request": {"path": path}}

tool(user, arguments) := {"identity": {"user": user}, "request": {"path": "/mcp"}, "mcp": {"method": "tools/call", "tool": "edit_file", "arguments": arguments}}

test_own_path_is_allowed if {
	ownership.decision.allow with input as rest("alice", "/users/alice/settings")
}

test_someone_elses_path_is_denied if {
	d := ownership.decision with input as rest("alice", "/files/bob/notes.txt")
	d.reasons == ["not_owner"]
}

test_other_paths_are_not_this_rules_business if {
	ownership.decision.allow with input as rest("alice", "/status")
}

test_mcp_owner_argument if {
	ownership.decision.allow with input as tool("alice", {"owner": "alice", "path": "a.txt"})
	not ownership.decision.allow with input as tool("alice", {"owner": "bob", "path": "a.txt"})
	not ownership.decision.allow with input as tool("alice", {"path": "a.txt"})
}

test_listing_shows_the_tool if {
	doc := {"identity": {"user": "alice"}, "request": {"path": "/mcp"}, "mcp": {"method": "tools/call", "tool": "edit_file", "listing": true}}
	ownership.decision.allow with input as doc
}
