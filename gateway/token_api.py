"""``POST /v1/tokens`` on the admin API: mint a token (e.g. bound to a durable run) with the admin credential.

Body: ``{"agent", "user", "ttl"?: "15m" | seconds, "run"?: id, "scopes"?: [..]}``. Answers 201
``{"token", "expires_at", "token_type": "at+jwt"}``. Same checks as ``wardgate tokens mint``: the
agent must be active, scopes narrow (never widen) the agent's, the TTL is capped.
"""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from .errors import BadRequest, IdentityError
from .identity import TokenIssuer
from .settings import parse_duration


async def mint_token(request: web.Request) -> web.Response:
    from .admin import STATE  # the admin module registers this handler; import late to avoid a cycle

    state = request.app[STATE]
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("body must be JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("agent"), str) or not isinstance(body.get("user"), str):
        raise BadRequest("body needs string fields agent and user")
    run = body.get("run")
    if run is not None and (not isinstance(run, str) or not 0 < len(run) <= 200):
        raise BadRequest("run must be a string of 1-200 characters", code="invalid_run")
    try:
        ttl = parse_duration(body["ttl"]) if body.get("ttl") is not None else None
    except (ValueError, TypeError):
        raise BadRequest("ttl must be a duration like 15m", code="invalid_ttl") from None
    agent = await asyncio.to_thread(state.registry.get, body["agent"])
    if agent.status != "active":
        raise IdentityError(f"agent {agent.name!r} is {agent.status}", code="agent_not_active")
    scopes = body.get("scopes")
    if scopes is None:
        chosen = agent.scopes
    elif isinstance(scopes, list) and all(isinstance(s, str) for s in scopes):
        chosen = tuple(sorted(set(scopes)))
        extra = set(chosen) - set(agent.scopes)
        if extra:
            raise BadRequest(f"agent {agent.name!r} is not allowed scopes {sorted(extra)}", code="scope_not_allowed")
    else:
        raise BadRequest("scopes must be a list of strings")
    now = time.time()
    issuer = TokenIssuer(state.keys, state.settings.identity)
    token = issuer.mint(agent=agent.name, tenant=agent.tenant, user=body["user"], scopes=chosen, ttl=ttl,
                        run=run, now=now)
    lifetime = state.settings.identity.default_ttl if ttl is None else ttl
    return web.json_response(
        {"token": token, "expires_at": int(now) + int(lifetime), "token_type": "at+jwt"}, status=201,
        headers={"Cache-Control": "no-store"},
    )


OPENAPI_PATHS = {
    "/v1/tokens": {"post": {"security": [{"admin": []}], "summary": "Mint an agent token (optionally bound to a run)",
                            "responses": {"201": {"description": "token"}, "400": {"description": "invalid"},
                                          "404": {"description": "unknown agent"}}}},
}
