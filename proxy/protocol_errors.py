"""Errors mitmproxy answers on its own (upstream unreachable, malformed request) in wardgate's shape.

mitmproxy renders protocol errors as an HTML page from inside its HTTP/1 layer, where no addon
hook can replace it. We swap that one renderer for one that emits the JSON body and the
``X-Wardgate-Error`` header every other refusal carries. The status code is mitmproxy's (or the one
``upstream_timeout.install`` set); a few of wardgate's own messages pick a more precise code.
"""

from __future__ import annotations

from mitmproxy import http
from mitmproxy.net.http import http1
from mitmproxy.proxy.layers.http import _http1

from wardgate.gateway.errors import UpstreamConnectTimeout, WardgateError, to_response

from .large_responses import OVER_CAP
from .scrub import uninspectable
from .upstream_timeout import CONNECT_TIMED_OUT

_CODES = {
    400: "bad_request",
    408: "request_timeout",
    413: "request_too_large",
    431: "request_headers_too_large",
    502: "upstream_error",
    504: "upstream_timeout",
}


_MESSAGES = {
    408: "the request did not arrive in time",
    504: "the upstream did not answer in time",
}


def _status_error(status_code: int, message: str = "") -> WardgateError:
    if message == CONNECT_TIMED_OUT:
        return UpstreamConnectTimeout("the upstream did not accept the connection in time; nothing was sent")
    if message == OVER_CAP:
        return uninspectable("inspection_limit_exceeded")
    code = _CODES.get(status_code, "upstream_error" if status_code >= 500 else "bad_request")
    default = "the upstream could not be reached or failed" if status_code >= 500 else "the request was malformed"
    return WardgateError(_MESSAGES.get(status_code, default), code=code)


def make_error_response(status_code: int, message: str = "") -> bytes:
    # mitmproxy's message may name internal addresses; the client gets only the stable code and our text.
    rendered = to_response(_status_error(status_code, message))
    headers = http.Headers(**{k.replace("-", "_"): v for k, v in rendered.headers.items()}, Connection="close")
    return http1.assemble_response(http.Response.make(status_code, rendered.body, headers))


def install() -> None:
    """Idempotent. Only the HTTP/1 renderer exists in the versions we support (11.0, 12.x)."""
    if getattr(_http1, "make_error_response", None) is not make_error_response:
        _http1.make_error_response = make_error_response
