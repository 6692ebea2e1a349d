package wardgate.examples.approval_test

import rego.v1

import data.wardgate.examples.approval

tool(name, arguments) := {"request": {"host": "mcp.example.com", "method": "POST", "path": "/mcp", "query": {}}, "mcp": {"method": "tools/call", "tool": name, "arguments": arguments}}

test_small_payment_needs_no_approval if {
	d := approval.decision with input as tool("create_payment", {"amount_cents": 500})
	d.allow == true
	d.require_approval == false
}

test_large_payment_needs_approval if {
	d := approval.decision with input as tool("create_payment", {"amount_cents": 50000})
	d.require_approval == true
	d.reasons == ["large_payment"]
}

test_large_payment_over_rest_needs_approval if {
	doc := {"request": {"host": "api.stripe.com", "method": "POST", "path": "/v1/payment_intents", "query": {"amount": ["20000"]}}}
	approval.decision.require_approval with input as doc
}

test_production_write_needs_approval_reads_do_not if {
	approval.decision.require_approval with input as tool("run_sql", {"database": "production", "query": "DELETE FROM t"})
	not approval.decision.require_approval with input as tool("run_sql", {"database": "production", "query": "select 1"})
}
