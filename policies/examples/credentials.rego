# Which credential may be injected for whom.
#
# input.credential.service names the service whose credential the gateway would inject for this
# call (never the credential itself). Each service lists the agents that may use it, the users
# they may act for, and the hosts the credential may be sent to.
package wardgate.examples.credentials

import rego.v1

services := {
	"github": {"agents": {"triage-bot", "release-bot"}, "users": "*", "hosts": {"api.github.com"}},
	"stripe": {"agents": {"billing-bot"}, "users": {"alice"}, "hosts": {"api.stripe.com"}},
}

default decision := {"allow": false, "reasons": ["credential_not_allowed"]}

decision := {"allow": true, "reasons": ["no_credential"]} if not input.credential

decision := {"allow": true, "reasons": ["credential_allowed"]} if {
	service := services[input.credential.service]
	input.identity.agent in service.agents
	user_allowed(service)
	input.request.host in service.hosts
}

user_allowed(service) if service.users == "*"

user_allowed(service) if input.identity.user in service.users
