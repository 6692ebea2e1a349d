"""One error hierarchy for everything wardgate refuses, and one way to turn it into a response.

    WardgateError                      status  code
    ├── ConfigError                     -      config_invalid        (start-up only, never an HTTP answer)
    ├── BadRequest                     400     bad_request
    ├── IdentityError                  407     identity_*            (missing, invalid, expired, revoked ...)
    ├── AdminAuthError                 401     admin_unauthorized
    ├── PolicyDenied                   403     policy_denied
    ├── NotFound                       404     not_found
    ├── RequestTimeout                 408     request_timeout       (the request body did not arrive in time)
    ├── Conflict                       409     conflict              (e.g. idempotent call still in flight)
    ├── PayloadTooLarge                413     request_too_large
    ├── Unprocessable                  422     unprocessable         (e.g. idempotency key reused)
    ├── HeadersTooLarge                431     request_headers_too_large
    ├── TooManyRequests                429     rate_limited
    ├── UpstreamError                  502     upstream_error
    ├── UpstreamTimeout                504     upstream_timeout      (connected and sent; no answer in time)
    │   └── UpstreamConnectTimeout     504     upstream_connect_timeout  (never connected: nothing was sent)
    └── DependencyUnavailable          503     *_unavailable         (policy, audit, state ...)

Every refusal a client sees carries a stable ``code`` (snake_case, never reworded once shipped)
and a human ``message``. Messages never contain a token, a secret or a credentialed URL: callers
pass only names and ids into them.

``to_response`` is the single mapping from an error to status, headers and body; the proxy addons
and the admin API both use it, so an agent sees the same body whichever door it used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar


class WardgateError(Exception):
    status: ClassVar[int] = 500
    code: str = "internal_error"

    def __init__(
        self, message: str, *, code: str | None = None, reasons: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.reasons: list[str] = list(reasons or [])


class ConfigError(WardgateError):
    code = "config_invalid"


class BadRequest(WardgateError):
    status = 400
    code = "bad_request"


class IdentityError(WardgateError):
    """The caller did not prove a live identity. Answered with 407 and Proxy-Authenticate."""

    status = 407
    code = "identity_invalid"


class AdminAuthError(WardgateError):
    status = 401
    code = "admin_unauthorized"


class PolicyDenied(WardgateError):
    status = 403
    code = "policy_denied"


class NotFound(WardgateError):
    status = 404
    code = "not_found"


class Conflict(WardgateError):
    status = 409
    code = "conflict"


class PayloadTooLarge(WardgateError):
    status = 413
    code = "request_too_large"


class Unprocessable(WardgateError):
    status = 422
    code = "unprocessable"


class HeadersTooLarge(WardgateError):
    status = 431
    code = "request_headers_too_large"


class TooManyRequests(WardgateError):
    status = 429
    code = "rate_limited"


class UpstreamError(WardgateError):
    status = 502
    code = "upstream_error"


class RequestTimeout(WardgateError):
    status = 408
    code = "request_timeout"


class UpstreamTimeout(WardgateError):
    status = 504
    code = "upstream_timeout"


class UpstreamConnectTimeout(UpstreamTimeout):
    """The upstream never accepted the connection, so it received nothing: a retry cannot repeat a side effect."""

    code = "upstream_connect_timeout"


class DependencyUnavailable(WardgateError):
    """A dependency the decision needs is down, slow or answered nonsense: fail closed."""

    status = 503
    code = "dependency_unavailable"


PROXY_AUTHENTICATE = 'Bearer realm="wardgate", Basic realm="wardgate"'


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def to_response(error: WardgateError, audit_id: str | None = None) -> ErrorResponse:
    """Render ``error`` as the JSON body and headers every client of wardgate receives."""
    payload = {
        "error": {
            "code": error.code,
            "message": error.message,
            "reasons": error.reasons,
            "audit_id": audit_id,
        }
    }
    headers = {
        "Content-Type": "application/json",
        "X-Wardgate-Error": error.code,
        "Cache-Control": "no-store",
    }
    if audit_id:
        headers["X-Wardgate-Audit-Id"] = audit_id
    if isinstance(error, IdentityError):
        headers["Proxy-Authenticate"] = PROXY_AUTHENTICATE
    body = json.dumps(payload, separators=(",", ":")).encode() + b"\n"
    return ErrorResponse(status=error.status, headers=headers, body=body)
