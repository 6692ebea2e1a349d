"""An httpx client already pointed at the wardgate proxy, with the wardgate CA trusted.

Inside a run step every request is stamped with ``X-Wardgate-Step`` and, for methods that change
state, an ``Idempotency-Key`` derived from run, step and the request's index within the step —
the same on every retry and every replay after a crash, so the gateway forwards it once. The
proxy identity is the run's token from :class:`~wardgate.sdk.tokens.RunTokens`; when it renews,
the client is rebuilt (the identity binds the proxy connection).

A call the policy parks for a human (403 ``approval_required``) is re-sent, with the same
idempotency key, every ``approval_poll`` seconds until it is approved (then it is forwarded once)
or denied (:class:`GatewayRefused` ``approval_denied``). The wait is durable because it is the
step itself: a run restarted mid-wait re-sends the same request and finds the same approval.

A response the gateway itself produced (``X-Wardgate-Error``) raises
:class:`~wardgate.sdk.errors.GatewayRefused`; it is not recorded as the step's result, so the
run stays resumable.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path
from typing import Any

import httpx

from . import proxy_url
from .errors import GatewayRefused
from .runs import current_step
from .tokens import RunTokens

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
APPROVAL_REQUIRED = "approval_required"


def _stamp(method: str, headers: dict[str, str] | None) -> dict[str, str]:
    stamped = dict(headers or {})
    step = current_step.get()
    if step is not None:
        stamped.setdefault("X-Wardgate-Step", step.header)
        if method.upper() not in SAFE_METHODS and not any(k.lower() == "idempotency-key" for k in stamped):
            stamped["Idempotency-Key"] = step.next_idempotency_key()
    return stamped


def _check(response: httpx.Response) -> httpx.Response:
    code = response.headers.get("x-wardgate-error")
    if code:
        try:
            body = response.json()
            message = body.get("error", {}).get("message", "")
        except ValueError:
            body, message = {}, ""
        raise GatewayRefused(response.status_code, code, message, body)
    return response


class _Base:
    def __init__(self, tokens: RunTokens, *, proxy: str = "127.0.0.1:8080", ca_file: str | Path | None = None,
                 timeout: float = 30.0, approval_poll: float = 2.0, approval_timeout: float | None = None) -> None:
        self._tokens = tokens
        self._approval_poll = approval_poll
        self._approval_timeout = approval_timeout
        host, _, port = proxy.removeprefix("http://").rpartition(":")
        self._host, self._port = host, int(port)
        self._verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
        self._timeout = timeout
        self._token: str | None = None

    def _proxy(self, token: str) -> str:
        return proxy_url(token, self._host, self._port)

    def _keep_waiting(self, response: httpx.Response, started: float) -> bool:
        if response.headers.get("x-wardgate-error") != APPROVAL_REQUIRED:
            return False
        return self._approval_timeout is None or time.monotonic() - started < self._approval_timeout


class ProxySession(_Base):
    """Synchronous flavour: ``session.post(url, json=...)`` inside ``run.step``."""

    _client: httpx.Client | None = None

    def _current(self) -> httpx.Client:
        token = self._tokens.get()
        if self._client is None or token != self._token:
            if self._client is not None:
                self._client.close()
            self._client = httpx.Client(proxy=self._proxy(token), verify=self._verify, timeout=self._timeout)
            self._token = token
        return self._client

    def request(self, method: str, url: str, *, headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        stamped, started = _stamp(method, headers), time.monotonic()
        while True:
            response = self._current().request(method, url, headers=stamped, **kwargs)
            if not self._keep_waiting(response, started):
                return _check(response)
            time.sleep(self._approval_poll)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> ProxySession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncProxySession(_Base):
    """asyncio flavour: ``await session.post(url, json=...)`` inside ``await run.astep``."""

    _client: httpx.AsyncClient | None = None

    async def _current(self) -> httpx.AsyncClient:
        token = self._tokens.get()
        if self._client is None or token != self._token:
            if self._client is not None:
                await self._client.aclose()
            self._client = httpx.AsyncClient(proxy=self._proxy(token), verify=self._verify, timeout=self._timeout)
            self._token = token
        return self._client

    async def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                      **kwargs: Any) -> httpx.Response:
        stamped, started = _stamp(method, headers), time.monotonic()
        while True:
            client = await self._current()
            response = await client.request(method, url, headers=stamped, **kwargs)
            if not self._keep_waiting(response, started):
                return _check(response)
            await asyncio.sleep(self._approval_poll)

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("POST", url, **kwargs)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> AsyncProxySession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
