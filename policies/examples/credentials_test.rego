package wardgate.examples.credentials_test

import rego.v1

import data.wardgate.examples.credentials

doc(agent, user, service, host) := {
	"identity": {"agent": agent, "user": user},
	"request": {"host": host},
	"credential": {"service": service},
}

test_agent_listed_for_service if {
	credentials.decision.allow with input as doc("triage-bot", "bob", "github", "api.github.com")
}

test_agent_not_listed if {
	not credentials.decision.allow with input as doc("triage-bot", "alice", "stripe", "api.stripe.com")
}

test_user_not_listed if {
	not credentials.decision.allow with input as doc("billing-bot", "bob", "stripe", "api.stripe.com")
}

test_credential_never_sent_to_another_host if {
	not credentials.decision.allow with input as doc("triage-bot", "bob", "github", "evil.example")
}

test_unknown_service if {
	not credentials.decision.allow with input as doc("triage-bot", "bob", "gitlab", "gitlab.com")
}

test_calls_without_credentials_pass if {
	credentials.decision.allow with input as {"identity": {"agent": "x", "user": "y"}, "request": {"host": "h"}}
}
