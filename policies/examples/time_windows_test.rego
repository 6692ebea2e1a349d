package wardgate.examples.time_windows_test

import rego.v1

import data.wardgate.examples.time_windows

deploy(weekday, hour) := {
	"request": {"host": "deploy.example.com", "method": "POST"},
	"time": {"weekday": weekday, "hour": hour},
}

test_tuesday_morning_is_allowed if {
	time_windows.decision.allow with input as deploy(1, 9)
}

test_evening_and_weekend_are_denied if {
	not time_windows.decision.allow with input as deploy(1, 18)
	not time_windows.decision.allow with input as deploy(5, 10)
	not time_windows.decision.allow with input as deploy(0, 7)
}

test_mcp_deploy_tool_follows_the_window if {
	doc := {"request": {"host": "mcp.example.com", "method": "POST"}, "mcp": {"method": "tools/call", "tool": "deploy"}, "time": {"weekday": 6, "hour": 12}}
	not time_windows.decision.allow with input as doc
}

test_reads_are_always_fine if {
	doc := {"request": {"host": "deploy.example.com", "method": "GET"}, "time": {"weekday": 6, "hour": 3}}
	time_windows.decision.allow with input as doc
}
