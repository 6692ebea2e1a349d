"""Run tokens that renew themselves: a run outlives any single token.

A *provider* is any callable returning a fresh token (a JWT string, or :class:`Token`); the
:class:`RunTokens` cache hands out the current one and calls the provider again once the token
is within ``renew_before`` of its expiry. :func:`admin_provider` mints run tokens through the
gateway's admin API (``POST /v1/tokens``); use it where the agent host holds the admin credential
(or put a small token service of your own in front of it).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from .errors import GatewayRefused, RunError


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    expires_at: float


def expiry_of(jwt: str) -> float:
    """The ``exp`` claim of a JWT, read without verifying it (the gateway verifies)."""
    try:
        payload = jwt.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        raise RunError("the token provider returned something that is not a JWT with exp",
                       code="token_invalid") from None


Provider = Callable[[], "Token | str"]


class RunTokens:
    """Thread-safe cache around a provider; ``get()`` is cheap until renewal is due."""

    def __init__(self, provider: Provider, *, renew_before: float = 60.0) -> None:
        self._provider = provider
        self._renew_before = renew_before
        self._current: Token | None = None
        self._lock = threading.Lock()
        self.renewals = 0

    def get(self) -> str:
        with self._lock:
            current = self._current
            if current is None or time.time() >= current.expires_at - self._margin(current):
                fresh = self._provider()
                current = fresh if isinstance(fresh, Token) else Token(fresh, expiry_of(fresh))
                self._current = current
                self.renewals += 1
            return current.value

    def _margin(self, token: Token) -> float:
        # Short-lived tokens renew at 80% of their life rather than never being "fresh enough".
        return min(self._renew_before, max(0.0, (token.expires_at - time.time())) * 0.2 + 1.0)


def admin_provider(
    admin_url: str,
    admin_token: str,
    *,
    agent: str,
    user: str,
    run_id: str,
    ttl: str | float = "15m",
    scopes: list[str] | None = None,
    timeout: float = 10.0,
) -> Callable[[], Token]:
    """A provider that mints a token bound to ``run_id`` through the admin API."""

    def mint() -> Token:
        body: dict[str, object] = {"agent": agent, "user": user, "run": run_id, "ttl": ttl}
        if scopes is not None:
            body["scopes"] = scopes
        response = httpx.post(
            f"{admin_url.rstrip('/')}/v1/tokens", json=body, timeout=timeout,
            headers={"Authorization": f"Bearer {admin_token}"},
        )
        if response.status_code != 201:
            error = response.json().get("error", {}) if response.headers.get("content-type", "").startswith(
                "application/json") else {}
            raise GatewayRefused(response.status_code, error.get("code", "token_mint_failed"),
                                 error.get("message", "the admin API did not mint a token"))
        data = response.json()
        return Token(data["token"], float(data["expires_at"]))

    return mint
