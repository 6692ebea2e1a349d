"""Admin API for pending approvals: ``GET /v1/approvals``, ``GET /v1/approvals/{id}``,
``POST /v1/approvals/{id}/approve`` and ``POST /v1/approvals/{id}/deny`` (body ``{"by"?, "note"?}``).

Installed onto the admin app by the server (``install``); admin credentials only, like all ``/v1/``.
"""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from .approvals import ApprovalStore
from .errors import BadRequest

APPROVALS = web.AppKey("approvals", ApprovalStore)
STATES = ("pending", "approved", "denied", "released", "expired")


async def list_approvals(request: web.Request) -> web.Response:
    state = request.query.get("state")
    if state is not None and state not in STATES:
        raise BadRequest(f"state must be one of {', '.join(STATES)}")
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise BadRequest("limit must be an integer") from None
    found = await asyncio.to_thread(request.app[APPROVALS].list, state, limit)
    return web.json_response({"approvals": found})


async def get_approval(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(request.app[APPROVALS].get, request.match_info["id"]))


async def _decide(request: web.Request, approve: bool) -> web.Response:
    body: dict[str, object] = {}
    if request.can_read_body:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest("body must be JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object")
    by, note = body.get("by", "admin-api"), body.get("note")
    if not isinstance(by, str) or (note is not None and not isinstance(note, str)):
        raise BadRequest("by and note must be strings")
    decided = await asyncio.to_thread(
        request.app[APPROVALS].decide, request.match_info["id"], approve, by, note, time.time()
    )
    return web.json_response(decided)


async def approve(request: web.Request) -> web.Response:
    return await _decide(request, True)


async def deny(request: web.Request) -> web.Response:
    return await _decide(request, False)


def install(app: web.Application, store: ApprovalStore) -> None:
    app[APPROVALS] = store
    app.router.add_get("/v1/approvals", list_approvals)
    app.router.add_get("/v1/approvals/{id}", get_approval)
    app.router.add_post("/v1/approvals/{id}/approve", approve)
    app.router.add_post("/v1/approvals/{id}/deny", deny)


_ADMIN = [{"admin": []}]
OPENAPI_PATHS = {
    "/v1/approvals": {"get": {"security": _ADMIN, "summary": "Approvals (filter with ?state=pending)",
                              "responses": {"200": {"description": "approvals"}}}},
    "/v1/approvals/{id}": {"get": {"security": _ADMIN, "responses": {"200": {"description": "approval"},
                                                                     "404": {"description": "unknown"}}}},
    "/v1/approvals/{id}/approve": {"post": {"security": _ADMIN, "responses": {
        "200": {"description": "approved"}, "409": {"description": "not pending"}}}},
    "/v1/approvals/{id}/deny": {"post": {"security": _ADMIN, "responses": {
        "200": {"description": "denied"}, "409": {"description": "not pending"}}}},
}
