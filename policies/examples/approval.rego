# require_approval: risky calls are allowed only once a human approves them.
#
# The decision allows the call and sets require_approval; the gateway then holds it (403
# approval_required) until `wardgate approvals approve` records a human's yes. Here: payments over
# 100 (in the smallest currency unit here: cents) and any production database write.
package wardgate.examples.approval

import rego.v1

default decision := {"allow": true, "reasons": ["low_risk"], "require_approval": false}

decision := {"allow": true, "reasons": sort([r | some r in risky]), "require_approval": true} if count(risky) > 0

risky contains "large_payment" if {
	input.request.host == "api.stripe.com"
	input.request.method == "POST"
	startswith(input.request.path, "/v1/payment_intents")
	to_number(object.get(input.request.query, "amount", ["0"])[0]) > 10000
}

risky contains "large_payment" if {
	input.mcp.tool == "create_payment"
	not input.mcp.listing
	input.mcp.arguments.amount_cents > 10000
}

risky contains "production_write" if {
	input.mcp.tool == "run_sql"
	input.mcp.arguments.database == "production"
	not regex.match(`(?i)^\s*select\b`, input.mcp.arguments.query)
}
