"""The admin HTTP API (aiohttp): its own listener, admin credentials only, never agent tokens.

Public, unauthenticated: ``/healthz``, ``/readyz``, ``/.well-known/jwks.json``, ``/metrics``,
``/openapi.json``. Everything under ``/v1/`` needs ``Authorization: Bearer <admin token>``.
Errors use the same body as the proxy (:func:`wardgate.gateway.errors.to_response`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from aiohttp import web

from . import admin_token, approval_api, audit_page, oauth_connect, token_api
from . import keys as keys_module
from .agents import AgentDirectory, AgentRegistry
from .audit import AuditQuery, query_records
from .audit_keys import load_public_keys
from .audit_store import store_exists
from .audit_verify import verify_record
from .audit_writer import AuditLog
from .audit_filters import query_from
from .audit_setup import audit_source, keys_dir
from .errors import AdminAuthError, BadRequest, NotFound, WardgateError, to_response
from .keys import KeyRing
from .policy import PolicyClient
from .revocations import RevocationView
from .revoker import Revoker
from .settings import Settings


@dataclass
class AdminState:
    settings: Settings
    keys: KeyRing
    registry: AgentRegistry
    audit: AuditLog
    token: str
    ready: Callable[[], Awaitable[bool]]
    revoker: Revoker | None = None
    revocations: RevocationView | None = None
    directory: AgentDirectory | None = None
    policy: PolicyClient | None = None


STATE = web.AppKey("state", AdminState)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(error: WardgateError) -> web.Response:
    rendered = to_response(error)
    return web.Response(status=rendered.status, body=rendered.body, headers=rendered.headers)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except WardgateError as error:
        return _error(error)
    except web.HTTPException as exc:
        if exc.status >= 400:
            code = "not_found" if exc.status == 404 else "method_not_allowed" if exc.status == 405 else "bad_request"
            error = WardgateError(exc.reason, code=code)
            rendered = to_response(error)
            return web.Response(status=exc.status, body=rendered.body, headers=rendered.headers)
        raise


@web.middleware
async def admin_auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/v1/"):
        if not admin_token.matches(request.headers.get("Authorization"), request.app[STATE].token):
            raise AdminAuthError("an admin credential is required")
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready = await request.app[STATE].ready()
    return web.json_response({"ready": ready}, status=200 if ready else 503)


async def jwks(request: web.Request) -> web.Response:
    state = request.app[STATE]
    published = state.keys.jwks()
    if state.revocations is not None:
        published["keys"] = [k for k in published["keys"] if k["kid"] not in state.revocations.keys]
    return web.json_response(published, headers={"Cache-Control": "max-age=60"})


async def metrics(request: web.Request) -> web.Response:
    audit = request.app[STATE].audit
    gauges = {
        "wardgate_audit_queue_depth": ("gauge", "Audit records queued but not yet committed.", audit.pending),
        "wardgate_audit_spooled_records": ("gauge", "Audit records waiting in the local spool (replica unready).", audit.spooled),
        "wardgate_audit_records_committed_total": ("counter", "Audit records committed by this process.", audit.committed),
        "wardgate_audit_batches_total": ("counter", "Group-commit transactions by this process.", audit.batches),
        "wardgate_audit_records_lost_total": ("counter", "Audit records neither stored nor spooled.", audit.lost),
    }
    policy = request.app[STATE].policy
    if policy is not None:
        cache = policy.cache
        gauges.update({
            "wardgate_policy_cache_on": ("gauge", "1 when decisions are reused (gateway/decision_cache.py).", int(cache.on)),
            "wardgate_policy_cache_entries": ("gauge", "Decisions held for reuse by this process.", len(cache)),
            "wardgate_policy_cache_hits_total": ("counter", "Calls decided by a reused decision.", cache.hits),
            "wardgate_policy_cache_misses_total": ("counter", "Calls the cache could key but OPA had to decide.", cache.misses),
        })
    return web.Response(text=audit.metrics.render(gauges), content_type="text/plain")


async def list_agents(request: web.Request) -> web.Response:
    agents = await asyncio.to_thread(request.app[STATE].registry.list)
    return web.json_response({"agents": [a.as_dict() for a in agents]})


async def create_agent(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("body must be JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not isinstance(body.get("tenant"), str):
        raise BadRequest("body needs string fields name and tenant")
    scopes = body.get("scopes", [])
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise BadRequest("scopes must be a list of strings")
    owner = body.get("owner", "")
    registry = request.app[STATE].registry
    agent = await asyncio.to_thread(registry.create, body["name"], body["tenant"], scopes, str(owner))
    return web.json_response(agent.as_dict(), status=201)


async def get_agent(request: web.Request) -> web.Response:
    agent = await asyncio.to_thread(request.app[STATE].registry.get, request.match_info["name"])
    return web.json_response(agent.as_dict())


async def _json_object(request: web.Request) -> dict[str, object]:
    try:
        body = await request.json() if request.can_read_body else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("body must be JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def _text(body: dict[str, object], name: str, default: str = "") -> str:
    value = body.get(name, default)
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    return value


def _revoker(state: AdminState) -> Revoker:
    if state.revoker is None:
        raise NotFound("revocation is not configured on this listener", code="revocation_not_configured")
    return state.revoker


async def create_revocation(request: web.Request) -> web.Response:
    """POST /v1/revocations {kind: token|run|agent|key, subject, reason?, actor?}."""
    state = request.app[STATE]
    body = await _json_object(request)
    kind, subject = _text(body, "kind"), _text(body, "subject")
    actor = _text(body, "actor", "admin-api")
    if kind == "agent":
        await asyncio.to_thread(state.registry.get, subject)  # 404 for an unknown agent
    if kind == "key":
        await asyncio.to_thread(keys_module.retire, state.settings.keys_dir, subject)
    revocation = await _revoker(state).revoke(kind, subject, actor=actor, reason=_text(body, "reason"))  # type: ignore[arg-type]
    return web.json_response(revocation.as_dict(), status=201)


async def list_revocations(request: web.Request) -> web.Response:
    view = request.app[STATE].revocations
    if view is None:
        raise NotFound("revocation is not configured on this listener", code="revocation_not_configured")
    return web.json_response({
        "revision": view.revision,
        "staleness_seconds": view.staleness,
        "tokens": sorted(view.tokens),
        "runs": sorted(view.runs),
        "keys": sorted(view.keys),
        "agents": view.agents,
    })


async def set_agent_status(request: web.Request) -> web.Response:
    """POST /v1/agents/{name}/disable|enable {reason?, actor?}: refuses (or again accepts) all its tokens."""
    state = request.app[STATE]
    body = await _json_object(request)
    action = request.match_info["action"]
    status = "disabled" if action == "disable" else "active"
    agent = await asyncio.to_thread(state.registry.set_status, request.match_info["name"], status)
    if state.directory is not None:
        await state.directory.refresh()  # immediate on this replica, not at the next reload
    await _revoker(state).record(action.upper(), "agent", agent.name, actor=_text(body, "actor", "admin-api"),
                                 reason=_text(body, "reason"))
    return web.json_response(agent.as_dict())


async def rotate_keys(request: web.Request) -> web.Response:
    state = request.app[STATE]
    kid = await asyncio.to_thread(keys_module.rotate, state.settings.keys_dir)
    await asyncio.to_thread(state.keys.reload)
    return web.json_response({"kid": kid}, status=201)


async def audit_records(request: web.Request) -> web.Response:
    """The filters of ``wardgate audit query``; newest first; ``cursor`` continues after a page.

    Under ``/v1/tenants/{tenant}/audit/records`` the tenant filter is fixed by the path and a
    ``tenant`` parameter naming another tenant is refused.
    """
    params = dict(request.query)
    scoped = request.match_info.get("tenant")
    if scoped is not None:
        if params.get("tenant") not in (None, scoped):
            raise BadRequest("tenant parameter conflicts with the tenant in the path", code="tenant_mismatch")
        params["tenant"] = scoped
    query = replace(query_from(params), before=params.get("cursor") or None)
    records = await asyncio.to_thread(query_records, audit_source(request.app[STATE].settings), query)
    if query.call_id and not records:
        raise NotFound("no audit record with that call id", code="audit_record_not_found")
    next_cursor = records[-1]["id"] if len(records) == query.limit else None
    return web.json_response({"records": records, "next_cursor": next_cursor})


async def audit_record(request: web.Request) -> web.Response:
    """One record and its verification status (its own hash, its link, the checkpoint covering it)."""
    settings = request.app[STATE].settings
    keys = await asyncio.to_thread(load_public_keys, [keys_dir(settings)])
    source = audit_source(settings)
    record_id = request.match_info["id"]
    verification = await asyncio.to_thread(verify_record, source, keys, record_id) if store_exists(source) else None
    if verification is None:
        raise NotFound("no audit record with that id", code="audit_record_not_found")
    [record] = await asyncio.to_thread(query_records, source, AuditQuery(record_id=record_id, limit=1))
    return web.json_response({"record": record, "verification": verification})


AUDIT_PARAMETERS = [
    {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
    for name in ("agent", "user", "tenant", "run", "host", "method", "decision", "status", "kind", "call_id",
                 "path", "since", "until", "limit", "cursor")
]

OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "wardgate admin API", "version": "1"},
    "components": {
        "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}},
    },
    "paths": {
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
        "/readyz": {"get": {"summary": "Readiness (OPA reachable, audit writer running)",
                            "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
        "/.well-known/jwks.json": {"get": {"summary": "Public keys that verify wardgate tokens",
                                           "responses": {"200": {"description": "JWK set"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "metrics"}}}},
        "/v1/agents": {
            "get": {"security": [{"admin": []}], "responses": {"200": {"description": "agents"}}},
            "post": {"security": [{"admin": []}], "responses": {"201": {"description": "created"},
                                                               "400": {"description": "invalid"}}},
        },
        "/v1/agents/{name}": {"get": {"security": [{"admin": []}],
                                      "parameters": [{"name": "name", "in": "path", "required": True,
                                                      "schema": {"type": "string"}}],
                                      "responses": {"200": {"description": "agent"},
                                                    "404": {"description": "unknown"}}}},
        "/v1/revocations": {
            "get": {"security": [{"admin": []}], "summary": "This replica's revocation view",
                    "responses": {"200": {"description": "revocations"}}},
            "post": {"security": [{"admin": []}],
                     "summary": "Revoke a token (jti), a run, an agent's tokens issued so far, or a signing key",
                     "requestBody": {"content": {"application/json": {"schema": {
                         "type": "object", "required": ["kind", "subject"],
                         "properties": {"kind": {"enum": ["token", "run", "agent", "key"]},
                                        "subject": {"type": "string"}, "reason": {"type": "string"},
                                        "actor": {"type": "string"}}}}}},
                     "responses": {"201": {"description": "revoked"}, "400": {"description": "invalid"},
                                   "404": {"description": "unknown agent or key"},
                                   "409": {"description": "the active signing key"}}},
        },
        "/v1/agents/{name}/disable": {"post": {"security": [{"admin": []}], "responses": {"200": {"description": "agent"}}}},
        "/v1/agents/{name}/enable": {"post": {"security": [{"admin": []}], "responses": {"200": {"description": "agent"}}}},
        "/v1/keys/rotate": {"post": {"security": [{"admin": []}], "responses": {"201": {"description": "new signing kid"}}}},
        "/v1/audit/records": {"get": {"security": [{"admin": []}], "parameters": AUDIT_PARAMETERS,
                                      "responses": {"200": {"description": "records and next_cursor"},
                                                    "400": {"description": "invalid filter"}}}},
        "/v1/audit/records/{id}": {"get": {"security": [{"admin": []}], "parameters": [
            {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the record and its verification status"},
                          "404": {"description": "unknown"}}}},
        "/ui/audit": {"get": {"summary": "Read-only audit web page (uses the admin API with the admin token)",
                              "responses": {"200": {"description": "HTML"}}}},
        "/v1/tenants/{tenant}/audit/records": {"get": {"security": [{"admin": []}], "parameters": [
            {"name": "tenant", "in": "path", "required": True, "schema": {"type": "string"}}, *AUDIT_PARAMETERS],
            "responses": {"200": {"description": "one tenant's records and next_cursor"}}}},
    },
}


OPENAPI["paths"].update(token_api.OPENAPI_PATHS)
OPENAPI["paths"].update(approval_api.OPENAPI_PATHS)
OPENAPI["paths"].update(oauth_connect.OPENAPI_PATHS)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


def build_app(state: AdminState) -> web.Application:
    app = web.Application(middlewares=[errors_middleware, admin_auth_middleware], client_max_size=1 << 20)
    app[STATE] = state
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/v1/agents", list_agents)
    app.router.add_post("/v1/agents", create_agent)
    app.router.add_get("/v1/agents/{name}", get_agent)
    app.router.add_get("/v1/audit/records", audit_records)
    app.router.add_post("/v1/revocations", create_revocation)
    app.router.add_get("/v1/revocations", list_revocations)
    app.router.add_post(r"/v1/agents/{name}/{action:disable|enable}", set_agent_status)
    app.router.add_post("/v1/keys/rotate", rotate_keys)
    app.router.add_get("/v1/tenants/{tenant}/audit/records", audit_records)
    app.router.add_post("/v1/tokens", token_api.mint_token)
    app.router.add_get("/v1/audit/records/{id}", audit_record)
    audit_page.add_routes(app)
    return app
