"""Idempotency: exactly-once forwarding for requests that carry an ``Idempotency-Key``.

Runs in the ``request`` hook (the body is needed for the fingerprint), after EgressPolicy has
allowed the call and committed its intent record, and before anything is forwarded. See
:mod:`wardgate.gateway.idempotency` for the outcomes. A replayed response carries
``X-Wardgate-Replay: true`` and its outcome audit record has ``replay = 1``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Coroutine
from typing import Any

from mitmproxy import http

from wardgate.gateway.audit_writer import AuditLog
from wardgate.gateway.errors import BadRequest, Conflict, DependencyUnavailable, Unprocessable, WardgateError
from wardgate.gateway.idempotency import IdempotencyStore, Outcome, StoredResponse, fingerprint, process_gone
from wardgate.gateway.settings import IdempotencySettings

from .call import call_of
from .refusals import refuse

log = logging.getLogger("wardgate.proxy")

HEADER = "idempotency-key"
REPLAY_HEADER = "X-Wardgate-Replay"
MAX_KEY_LENGTH = 255
CLAIM = "wardgate.idempotency"
# Not part of the stored response: per-connection, or stamped afresh on every answer.
_UNSTORED = {"connection", "keep-alive", "transfer-encoding", "x-wardgate-audit-id", REPLAY_HEADER.lower()}
_POLL = 0.05
# Expired records are also dropped lazily per key; this bounds the table for one-off keys.
_PURGE_EVERY = 500
# Set by GatewayExchange (proxy/exchange.py) when the response came from the upstream.
UPSTREAM_ANSWERED = "wardgate.idempotency.upstream_answered"


def _connected(flow: http.HTTPFlow) -> bool:
    return flow.server_conn is not None and flow.server_conn.timestamp_tcp_setup is not None


def _valid_key(key: str) -> bool:
    return 0 < len(key) <= MAX_KEY_LENGTH and key.isascii() and key.isprintable()


class Idempotency:
    def __init__(
        self, store: IdempotencyStore, settings: IdempotencySettings, audit: AuditLog, audit_timeout: float
    ) -> None:
        self._store = store
        self._settings = settings
        self._audit = audit
        self._audit_timeout = audit_timeout
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self._claims = 0

    async def _refuse(self, flow: http.HTTPFlow, error: WardgateError) -> None:
        # The intent record is already committed; this refusal record closes the call.
        call_of(flow).forwarded_at = None
        await refuse(flow, error, self._audit, self._audit_timeout)

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        if HEADER not in flow.request.headers:
            return None  # the common case, decided without a task (proxy/inline_hooks.py)
        return self._checked_request(flow)

    async def _checked_request(self, flow: http.HTTPFlow) -> None:
        try:
            await self._request(flow)
        except Exception as exc:  # noqa: BLE001 - mitmproxy would log and forward: fail closed instead
            log.exception("idempotency check of call %s failed", call_of(flow).call_id)
            if flow.response is None:
                await self._refuse(flow, DependencyUnavailable(
                    f"the idempotency check failed ({type(exc).__name__})", code="idempotency_unavailable"))

    async def _request(self, flow: http.HTTPFlow) -> None:
        call = call_of(flow)
        key = flow.request.headers.get(HEADER)
        if key is None or flow.response is not None or call.principal is None or call.forwarded_at is None:
            return
        if not _valid_key(key):
            await self._refuse(flow, BadRequest("Idempotency-Key must be 1-255 printable ASCII characters",
                                                code="idempotency_key_invalid"))
            return
        call.idempotency_key = key
        principal = call.principal
        scope = f"{principal.tenant}\x00{principal.agent}\x00{principal.user}"
        request = flow.request
        print_ = fingerprint(
            request.method, request.scheme, request.pretty_host, request.port, request.path,
            request.headers.get("content-type", ""), request.raw_content or b"",
        )
        deadline = time.monotonic() + self._settings.in_flight_wait
        while True:
            try:
                result = await asyncio.to_thread(
                    self._store.claim, scope, key, print_, self._owner, call.call_id, time.time(), self._settings.ttl
                )
            except Exception as exc:  # noqa: BLE001 - any store failure: fail closed, never forward twice
                log.error("idempotency store failed for call %s: %s", call.call_id, type(exc).__name__)
                await self._refuse(flow, DependencyUnavailable("the idempotency store is unavailable",
                                                               code="idempotency_unavailable"))
                return
            if result.outcome is Outcome.CLAIMED:
                flow.metadata[CLAIM] = (scope, key)
                self._claims += 1
                if self._claims % _PURGE_EVERY == 0:
                    await asyncio.to_thread(self._store.purge, time.time())
                return
            if result.outcome is Outcome.REPLAY:
                assert result.response is not None
                self._replay(flow, result.response)
                return
            if result.outcome is Outcome.MISMATCH:
                await self._refuse(flow, Unprocessable(
                    "this Idempotency-Key was used for a different request", code="idempotency_key_reused"))
                return
            if result.outcome is Outcome.IN_FLIGHT and process_gone(result.owner):
                # The gateway process that claimed it died mid-call: it will never complete.
                assert result.owner is not None
                await asyncio.to_thread(self._store.mark_unknown, scope, key, result.owner)
                continue
            if result.outcome is Outcome.UNKNOWN:
                await self._refuse(flow, Conflict(
                    "the first request with this Idempotency-Key reached the upstream but its response was lost;"
                    " it is not sent again", code="idempotency_outcome_unknown"))
                return
            if time.monotonic() >= deadline:
                await self._refuse(flow, Conflict(
                    "a request with this Idempotency-Key is still in flight", code="idempotency_in_flight"))
                return
            await asyncio.sleep(_POLL)

    def _replay(self, flow: http.HTTPFlow, stored: StoredResponse) -> None:
        call = call_of(flow)
        call.replay = True
        headers = http.Headers([(name.encode(), value.encode()) for name, value in stored.headers])
        response = http.Response.make(stored.status, stored.body, headers)
        response.headers[REPLAY_HEADER] = "true"
        response.headers["X-Wardgate-Replay-Of"] = stored.call_id
        flow.response = response

    async def settle(self, flow: http.HTTPFlow, reached: bool) -> None:
        """The claimed request got no answer to store (proxy/exchange.py): if it ``reached`` an
        upstream connection, a retry must not send it again (unknown); if not, a retry may."""
        claim = flow.metadata.pop(CLAIM, None)
        if claim is None:
            return
        scope, key = claim
        try:
            if reached:
                await asyncio.to_thread(self._store.mark_unknown, scope, key, self._owner)
            else:
                await asyncio.to_thread(self._store.release, scope, key, self._owner)
        except Exception as exc:  # noqa: BLE001
            log.error("idempotency claim of call %s not settled: %s", call_of(flow).call_id, type(exc).__name__)

    def response(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        claim = flow.metadata.pop(CLAIM, None)
        if claim is None or flow.response is None:
            return None
        return self._settle_claim(flow, claim)

    async def _settle_claim(self, flow: http.HTTPFlow, claim: tuple[str, str]) -> None:
        scope, key = claim
        response = flow.response
        body = response.raw_content or b""
        try:
            if not flow.metadata.get(UPSTREAM_ANSWERED):
                # Answered at the gateway before anything went out: a retry may send it.
                await asyncio.to_thread(self._store.release, scope, key, self._owner)
                return
            # From here the upstream has seen the request. A refusal made after it answered (an
            # uninspectable response) is stored like any answer: a retry gets the same refusal
            # rather than a second upstream call.
            if len(body) > self._settings.max_response_bytes:
                await asyncio.to_thread(self._store.mark_unknown, scope, key, self._owner)
                return
            headers = [(name, value) for name, value in response.headers.items(multi=True)
                       if name.lower() not in _UNSTORED]
            stored = StoredResponse(response.status_code, headers, body, call_of(flow).call_id)
            await asyncio.to_thread(self._store.complete, scope, key, self._owner, stored)
        except Exception as exc:  # noqa: BLE001 - the response still goes out; the claim stays pending
            log.error("idempotency record of call %s not stored: %s", call_of(flow).call_id, type(exc).__name__)

    async def error(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get(UPSTREAM_ANSWERED) and flow.response is not None:
            return  # answered, the client left: GatewayExchange.error stores it (proxy/exchange.py)
        claim = flow.metadata.pop(CLAIM, None)
        if claim is None:
            return
        scope, key = claim
        try:
            # No upstream connection was ever made: nothing was sent, so a retry may send it.
            if _connected(flow):
                await asyncio.to_thread(self._store.mark_unknown, scope, key, self._owner)
            else:
                await asyncio.to_thread(self._store.release, scope, key, self._owner)
        except Exception as exc:  # noqa: BLE001
            log.error("idempotency claim of call %s not settled: %s", call_of(flow).call_id, type(exc).__name__)
