# Method and path rules: which HTTP verbs may reach which paths of one API.
#
# Paths are matched with glob.match and "/" as the delimiter, so "*" stays inside one segment
# and "**" spans several.
package wardgate.examples.methods_paths

import rego.v1

rules := [
	{"host": "api.github.com", "methods": {"GET"}, "paths": ["/repos/acme/**", "/user"]},
	{"host": "api.github.com", "methods": {"POST"}, "paths": ["/repos/acme/*/issues", "/repos/acme/*/issues/*/comments"]},
	# No rule ever allows DELETE: absent means denied.
]

default decision := {"allow": false, "reasons": ["no_rule_allows"]}

decision := {"allow": true, "reasons": ["method_and_path_allowed"]} if {
	some rule in rules
	rule.host == input.request.host
	input.request.method in rule.methods
	some pattern in rule.paths
	glob.match(pattern, ["/"], input.request.path)
}
