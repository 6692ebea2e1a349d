"""Work mitmproxy does several times per request, done in fewer steps with the same results.

- **Header access.** ``headers.get("content-length")`` on mitmproxy's ``Headers`` went through
  five Python frames (``Mapping.get``, ``_MultiDict.__getitem__``, ``Headers.get_all``, its
  ``_always_bytes``, ``_MultiDict.get_all`` with a ``_kconv`` call per field) and, for a header
  that is absent, a raised and caught ``KeyError``. mitmproxy's HTTP/1 layers ask this about a
  dozen times per call (body size, keep-alive, ``Host``), and so do wardgate's stages: together
  about 8% of the proxy's busy samples (py-spy, 8 connections). Here ``get_all``, ``get``,
  ``__getitem__`` and ``__contains__`` give the same answers, and raise the same errors, in one
  frame each.
- **Host validation.** ``is_valid_host`` (IDNA round trip, a regular expression per label, then an
  ``ipaddress`` parse) runs on every request's target, before any check of who sent it; its answer
  depends on the host alone, so the answers for the last 4,096 hosts are kept. Only hosts of at
  most 255 characters (longer ones are never valid) are remembered, so whatever a client sends, the
  cache holds at most about 4 MB.
- **A stream's context.** Every request gets a copy of its connection's layer context
  (``Context.fork``), which first built a new ``Server`` (a uuid4 and a dataclass whose every
  attribute assignment is checked; 20 µs) only to replace it with the connection's own. Here the
  copy takes the connection's server directly (0.4 µs).

``install`` is idempotent and checked against mitmproxy's own behaviour in
``tests/proxy/test_shortcuts.py``.
"""

from __future__ import annotations

import functools
from typing import Any

from mitmproxy import http
from mitmproxy.net import check
from mitmproxy.net.http import url
from mitmproxy.proxy.context import Context
from mitmproxy.utils.strutils import always_bytes

HOSTS_REMEMBERED = 4096
LONGEST_REMEMBERED_HOST = 255  # characters; a valid host name has at most 255 bytes
# mitmproxy's own, kept for the tests that compare answers.
MITMPROXY_GET_ALL = http.Headers.get_all
MITMPROXY_IS_VALID_HOST = check.is_valid_host
MITMPROXY_FORK = Context.fork


def _key(name: str | bytes) -> bytes:
    """The field name as mitmproxy compares it: UTF-8 (surrogates escaped) bytes, ASCII-lowercased."""
    if name.__class__ is str:
        return name.encode("utf-8", "surrogateescape").lower()  # type: ignore[union-attr]
    return always_bytes(name, "utf-8", "surrogateescape").lower()  # type: ignore[union-attr]


def get_all(self: http.Headers, name: str | bytes) -> list[str]:
    key = _key(name)
    return [value.decode("utf-8", "surrogateescape") for field, value in self.fields if field.lower() == key]


def get(self: http.Headers, key: str | bytes, default: Any = None) -> Any:
    name = _key(key)
    values = [value for field, value in self.fields if field.lower() == name]
    if not values:
        return default
    return b", ".join(values).decode("utf-8", "surrogateescape")


def getitem(self: http.Headers, key: str | bytes) -> str:
    found = get(self, key)
    if found is None:
        raise KeyError(key)
    return found  # type: ignore[no-any-return]


def contains(self: http.Headers, key: object) -> bool:
    name = _key(key)  # type: ignore[arg-type]
    for field, _ in self.fields:
        if field.lower() == name:
            return True
    return False


@functools.lru_cache(maxsize=HOSTS_REMEMBERED)
def remembered_host_check(host: str | bytes) -> bool:
    return MITMPROXY_IS_VALID_HOST(host)  # type: ignore[no-any-return]


def is_valid_host(host: str | bytes) -> bool:
    """mitmproxy's ``is_valid_host``, remembered for short hosts (anything else is asked afresh)."""
    if (host.__class__ is str or host.__class__ is bytes) and len(host) <= LONGEST_REMEMBERED_HOST:
        return remembered_host_check(host)
    return MITMPROXY_IS_VALID_HOST(host)  # type: ignore[no-any-return]


def fork(self: Context) -> Context:
    """``Context.fork``: the same client, options and server, a copy of the layer list."""
    copy = Context.__new__(Context)
    copy.client, copy.options, copy.server, copy.layers = self.client, self.options, self.server, self.layers.copy()
    return copy


def install() -> None:
    """Idempotent: faster ``Headers`` lookups, a remembered ``is_valid_host``, a cheaper ``Context.fork``."""
    headers = http.Headers
    headers.get_all = get_all  # type: ignore[method-assign]
    headers.get = get  # type: ignore[method-assign]
    headers.__getitem__ = getitem  # type: ignore[method-assign]
    headers.__contains__ = contains  # type: ignore[method-assign]
    check.is_valid_host = is_valid_host
    url.is_valid_host = is_valid_host  # type: ignore[attr-defined]
    Context.fork = fork  # type: ignore[method-assign]
