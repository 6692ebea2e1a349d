package wardgate.examples.methods_paths_test

import rego.v1

import data.wardgate.examples.methods_paths

req(method, path) := {"request": {"method": method, "host": "api.github.com", "path": path}}

test_read_anything_under_the_org if {
	methods_paths.decision.allow with input as req("GET", "/repos/acme/app/pulls/3")
}

test_read_other_org_is_denied if {
	not methods_paths.decision.allow with input as req("GET", "/repos/other/app")
}

test_post_issue_but_not_elsewhere if {
	methods_paths.decision.allow with input as req("POST", "/repos/acme/app/issues")
	not methods_paths.decision.allow with input as req("POST", "/repos/acme/app/pulls")
	not methods_paths.decision.allow with input as req("POST", "/repos/acme/app/x/issues")
}

test_delete_is_never_allowed if {
	d := methods_paths.decision with input as req("DELETE", "/repos/acme/app")
	d == {"allow": false, "reasons": ["no_rule_allows"]}
}
