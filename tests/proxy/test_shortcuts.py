"""proxy/shortcuts.py answers exactly as mitmproxy does: header access, host validation, a stream's context."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import connection, http, options
from mitmproxy.coretypes import multidict
from mitmproxy.net import check
from mitmproxy.net.http import url
from mitmproxy.proxy.context import Context

from wardgate.proxy import shortcuts

shortcuts.install()


class MitmproxyHeaders(http.Headers):  # type: ignore[misc]
    """Headers with mitmproxy's own lookups, whatever install() did to the class."""

    get_all = shortcuts.MITMPROXY_GET_ALL
    get = Mapping.get
    __getitem__ = multidict._MultiDict.__getitem__
    __contains__ = Mapping.__contains__


NAMES = [b"Host", b"host", b"HOST", b"Content-Length", b"content-length", b"Transfer-Encoding", b"X-A",
         b"x-\xc3\x89t\xc3\xa9", b"X-\xc3\x89T\xc3\xa9", b"x-\xff", b"X-\xff"]
VALUES = st.binary(max_size=8) | st.sampled_from([b"caf\xc3\xa9", b"\xe2\x82", b"\xff\xfe", b"1, 2"])
KEYS = st.sampled_from(NAMES) | st.sampled_from([n.decode("utf-8", "surrogateescape") for n in NAMES]) \
    | st.sampled_from(["x-été", "X-ÉTÉ", "absent", b"absent", "x-\udcff"])


def answers(headers: http.Headers, key: Any) -> tuple[Any, ...]:
    def attempt(operation: Any) -> Any:
        try:
            return ("value", operation())
        except Exception as exc:  # noqa: BLE001 - the error's type is part of the answer
            return ("error", type(exc))

    return (attempt(lambda: headers.get_all(key)), attempt(lambda: headers.get(key)),
            attempt(lambda: headers.get(key, "fallback")), attempt(lambda: headers[key]),
            attempt(lambda: key in headers))


@settings(max_examples=400, deadline=None)
@given(fields=st.lists(st.tuples(st.sampled_from(NAMES), VALUES), max_size=6), key=KEYS)
def test_header_lookups_answer_as_mitmproxy_does(fields: list[tuple[bytes, bytes]], key: Any) -> None:
    assert answers(http.Headers(fields), key) == answers(MitmproxyHeaders(fields), key)


@pytest.mark.parametrize("key", [None, 3, 2.5])
def test_a_key_that_is_not_text_fails_as_in_mitmproxy(key: Any) -> None:
    fields = [(b"Host", b"a")]
    ours, theirs = answers(http.Headers(fields), key), answers(MitmproxyHeaders(fields), key)
    assert ours == theirs
    assert all(kind == "error" for kind, _ in ours)


def test_install_replaces_the_lookups_once() -> None:
    shortcuts.install()
    assert http.Headers.get is shortcuts.get and http.Headers.__getitem__ is shortcuts.getitem
    assert http.Headers.__contains__ is shortcuts.contains and http.Headers.get_all is shortcuts.get_all
    assert check.is_valid_host is shortcuts.is_valid_host and url.is_valid_host is shortcuts.is_valid_host
    assert shortcuts.remembered_host_check.cache_info().maxsize == shortcuts.HOSTS_REMEMBERED
    assert Context.fork is shortcuts.fork


HOSTS = ["example.com", "EXAMPLE.com.", "a_b.example", "127.0.0.1", "::1", "[::1]", "xn--caf-dma.example",
         "café.example", b"caf\xc3\xa9.example", b"example.com", "", ".", "a..b", "-a.example",
         "a" * 64 + ".example", ("a" * 63 + ".") * 4 + "a", "256.0.0.1", "exa mple.com", "\udcff.example",
         b"\xff.example", "1.2.3.4.5", None, 3, bytearray(b"example.com"), "a." * 200, b"b" * 300]


@pytest.mark.parametrize("host", HOSTS)
def test_remembered_host_validation_answers_as_mitmproxy_does(host: str | bytes) -> None:
    def outcome(function: Any) -> Any:
        try:
            return function(host)
        except Exception as exc:  # noqa: BLE001 - the error's type is part of the answer
            return type(exc)

    expected = outcome(shortcuts.MITMPROXY_IS_VALID_HOST)
    assert outcome(check.is_valid_host) == expected
    assert outcome(check.is_valid_host) == expected  # the second answer comes from the cache


def test_only_short_hosts_are_remembered() -> None:
    """A client chooses the hosts it sends, before any check of who it is: what is kept stays small."""
    remembered = shortcuts.remembered_host_check
    remembered.cache_clear()
    assert check.is_valid_host("short.example") and remembered.cache_info().currsize == 1
    assert not check.is_valid_host("x" * 70_000) and not check.is_valid_host(b"y" * 256)
    assert remembered.cache_info().currsize == 1
    for number in range(shortcuts.HOSTS_REMEMBERED + 50):
        check.is_valid_host(f"host-{number}.example")
    assert remembered.cache_info().currsize == shortcuts.HOSTS_REMEMBERED


def test_parsed_requests_still_refuse_invalid_hosts() -> None:
    assert url.parse("http://example.com:8080/x") == (b"http", b"example.com", 8080, b"/x")
    with pytest.raises(ValueError):
        url.parse("http://exa mple.com/")
    assert url.parse_authority("example.com:443", check=True) == ("example.com", 443)
    with pytest.raises(ValueError):
        url.parse_authority("exa mple.com:443", check=True)


def test_a_forked_context_is_the_one_mitmproxy_forks() -> None:
    client = connection.Client(peername=("127.0.0.1", 50000), sockname=("127.0.0.1", 8080), timestamp_start=0)
    context = Context(client, options.Options())
    context.server = connection.Server(address=("example.com", 443))
    context.layers = [object(), object()]
    ours, theirs = context.fork(), shortcuts.MITMPROXY_FORK(context)
    for copy in (ours, theirs):
        assert type(copy) is Context
        assert copy.client is client and copy.options is context.options and copy.server is context.server
        assert copy.layers == context.layers and copy.layers is not context.layers
    assert vars(ours).keys() == vars(theirs).keys()
    ours.layers.append(object())
    assert len(context.layers) == 2
