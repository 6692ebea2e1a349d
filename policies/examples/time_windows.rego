# Time windows: deployments only in working hours, Monday to Friday, 08:00-18:00 UTC.
#
# input.time carries weekday (0 = Monday) and hour in UTC, computed by the gateway for each call,
# so tests can pin them.
package wardgate.examples.time_windows

import rego.v1

working_days := {0, 1, 2, 3, 4}

default decision := {"allow": false, "reasons": ["outside_change_window"]}

decision := {"allow": true, "reasons": ["not_a_deployment"]} if not is_deployment

decision := {"allow": true, "reasons": ["inside_change_window"]} if {
	is_deployment
	input.time.weekday in working_days
	input.time.hour >= 8
	input.time.hour < 18
}

is_deployment if {
	input.request.host == "deploy.example.com"
	input.request.method != "GET"
}

is_deployment if input.mcp.tool == "deploy"
