"""A three-step durable run whose middle step POSTs through the gateway; a test kills it with -9.

    python three_step_agent.py STORE RUN_ID ADMIN_URL ADMIN_TOKEN PROXY CA_FILE UPSTREAM_URL KILL_AT [PATH]

KILL_AT: ``none``, ``before_post`` (inside the step, before the call), ``after_post`` (response
received, checkpoint not written) or ``after_checkpoint`` (step 2 recorded, step 3 not run). The
process SIGKILLs itself there. Prints the run's result as JSON on the last line when it finishes.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from wardgate.sdk.http import ProxySession
from wardgate.sdk.runs import Run
from wardgate.sdk.tokens import RunTokens, admin_provider

store, run_id, admin_url, admin_token, proxy, ca_file, upstream, kill_at = sys.argv[1:9]
path = sys.argv[9] if len(sys.argv) > 9 else "/allowed/charge"


def die_if(point: str) -> None:
    if kill_at == point:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def prepare() -> dict:
    return {"amount": 7}


def charge(session: ProxySession, order: dict) -> int:
    die_if("before_post")
    print("posting", flush=True)
    response = session.post(f"{upstream}{path}", json=order)
    die_if("after_post")
    return int(response.json()["charge"])


def finish(order: dict, charge_number: int) -> dict:
    return {"amount": order["amount"], "charge": charge_number}


tokens = RunTokens(admin_provider(admin_url, admin_token, agent="acme-bot", user="alice", run_id=run_id))
with ProxySession(tokens, proxy=proxy, ca_file=ca_file, approval_poll=0.2) as session, Run(store, run_id) as run:
    order = run.step(prepare)
    number = run.step(charge, session, order)
    die_if("after_checkpoint")
    result = run.step(finish, order, number)
    run.complete(result)
print(json.dumps(result))
