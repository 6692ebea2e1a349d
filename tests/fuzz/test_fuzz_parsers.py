"""Property-based fuzzing (hypothesis) of the parsers wardgate owns on hostile input.

Each target first replays its corpus (``tests/fuzz/corpus/<target>/``, kept in the repository; add
any input that once broke something), then runs hypothesis for a bounded number of examples:
``WARDGATE_FUZZ_EXAMPLES`` (default 150 per target, a few seconds in all; raise it for a long run).

The properties: a parser either returns a value or raises wardgate's own error with a stable code —
never another exception — and the request-head check never accepts a head that mitmproxy would then
parse into something ambiguous (two lengths, a control character in a value, ...).
"""

from __future__ import annotations

import base64
import ipaddress
import os
import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from mitmproxy.net.http import http1
from mitmproxy.net.http.validate import validate_headers

from wardgate.gateway.agents import AgentDirectory, AgentRegistry
from wardgate.gateway.destinations import classify, parse_ip_literal
from wardgate.gateway.errors import ConfigError, IdentityError, WardgateError
from wardgate.gateway.identity import TokenIssuer, TokenVerifier, token_from_proxy_authorization
from wardgate.gateway.keys import KeyRing
from wardgate.gateway.settings import IdentitySettings, load_settings
from wardgate.gateway.usage import extract_usage
from wardgate.proxy.framing import inspect_head
from wardgate.proxy.trace import trace_id_of

CORPUS = Path(__file__).parent / "corpus"
FUZZ = settings(
    max_examples=int(os.environ.get("WARDGATE_FUZZ_EXAMPLES", "150")),
    deadline=None,
    database=None,  # the corpus in the repository is the memory; no local .hypothesis folder
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def corpus(target: str) -> list[bytes]:
    return [path.read_bytes() for path in sorted((CORPUS / target).iterdir())]


# -- request heads -----------------------------------------------------------------------------

FIELD_NAMES = ["Host", "Content-Length", "Transfer-Encoding", "content-length", "transfer-encoding", "X-A",
               "Transfer-Encoding ", " Host", "Proxy-Authorization", ""]
FIELD_VALUES = st.one_of(
    st.sampled_from(["a.example", "3", "0", "+3", "3, 3", "chunked", "Chunked", " chunked", "chunked, chunked",
                     "gzip, chunked", "identity", "99999999999999999999"]),
    st.text(alphabet=st.sampled_from(list("ab09 \t:,;\r\n\x00\x0b\x1b\x7f\u00e9")), max_size=12),
)
LINE_ENDS = st.sampled_from(["\r\n", "\r\n", "\r\n", "\n", "\r", "\r\n ", "\r\n\t"])


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]))
    method = draw(st.sampled_from(["GET", "POST", "CONNECT"]))
    text = f"{method} http://a.example/ {version}"
    for _ in range(draw(st.integers(0, 6))):
        text += draw(LINE_ENDS) + draw(st.sampled_from(FIELD_NAMES)) + ":" + draw(st.sampled_from(["", " "])) + draw(FIELD_VALUES)
    return (text + draw(LINE_ENDS) + "\r\n").encode("utf-8")


def check_head(head: bytes) -> None:
    verdict = inspect_head(head, 32768, 100)
    assert verdict is None or isinstance(verdict, WardgateError) and verdict.status in (400, 431)
    if verdict is not None:
        return
    # Accepted: mitmproxy must either refuse it too or parse it into one unambiguous request.
    lines = head.split(b"\n")
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines][:-2]
    try:
        request = http1.read_request_head(lines)
        validate_headers(request)
        http1.expected_http_body_size(request)
    except ValueError:
        return
    fields = request.headers.fields
    assert not any(c in value for _, value in fields for c in b"\r\n\x00"), fields
    names = [name.lower() for name, _ in fields]
    assert names.count(b"content-length") + names.count(b"transfer-encoding") <= 1
    assert names.count(b"host") <= 1


@pytest.mark.parametrize("head", corpus("heads"))
def test_head_corpus(head: bytes) -> None:
    check_head(head)


@FUZZ
@given(request_heads())
def test_fuzz_request_heads(head: bytes) -> None:
    check_head(head)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_request_heads_raw_bytes(raw: bytes) -> None:
    check_head(raw + b"\r\n\r\n")


# -- Proxy-Authorization -----------------------------------------------------------------------

def check_authorization(value: str) -> None:
    try:
        token = token_from_proxy_authorization(value)
    except IdentityError as error:
        assert error.code in ("identity_missing", "identity_malformed") and error.status == 407
        return
    assert token and token == token.strip()


@pytest.mark.parametrize("value", corpus("authorization"))
def test_authorization_corpus(value: bytes) -> None:
    check_authorization(value.decode())


@FUZZ
@given(st.one_of(
    st.text(max_size=80),
    st.builds(lambda s, b: f"{s} {base64.b64encode(b).decode()}", st.sampled_from(["Basic", "basic", "Bearer"]), st.binary(max_size=40)),
))
def test_fuzz_proxy_authorization(value: str) -> None:
    check_authorization(value)


# -- token verification ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def own_tokens(tmp_path_factory: pytest.TempPathFactory) -> tuple[TokenVerifier, str]:
    folder = tmp_path_factory.mktemp("fuzz-keys")
    keys = KeyRing.load(folder / "keys")
    identity = IdentitySettings()
    registry = AgentRegistry(folder / "state.db")
    verifier = TokenVerifier(keys, identity, AgentDirectory(registry))
    token = TokenIssuer(keys, identity).mint(agent="fuzz-bot", tenant="acme", user="alice", scopes=("read",), ttl=300)
    return verifier, token


@FUZZ
@given(data=st.data())
def test_fuzz_verify_signature_on_mutated_tokens(own_tokens: tuple[TokenVerifier, str], data: st.DataObject) -> None:
    """A mutated token is refused with an identity code, or (base64 slack bits) verifies as the very same principal."""
    verifier, token = own_tokens
    original = verifier.verify_signature(token)
    mutation = data.draw(st.sampled_from(["flip", "insert", "delete", "swap_segments", "junk"]))
    chars = list(token)
    at = data.draw(st.integers(0, len(chars) - 1))
    if mutation == "flip":
        chars[at] = data.draw(st.sampled_from(list("AZaz09-_.=+/ \x00")))
    elif mutation == "insert":
        chars.insert(at, data.draw(st.sampled_from(list("A.=_ %"))))
    elif mutation == "delete":
        del chars[at]
    elif mutation == "swap_segments":
        head, payload, signature = token.split(".")
        chars = list(".".join([payload, head, signature]))
    else:
        chars = list(data.draw(st.text(max_size=200)))
    mutated = "".join(chars)
    try:
        principal = verifier.verify_signature(mutated)
    except IdentityError as error:
        assert error.code.startswith("identity_")
        return
    assert principal == original


# -- destinations ------------------------------------------------------------------------------

def check_host(host: str) -> None:
    address = parse_ip_literal(host)
    if address is None:
        return
    verdict = classify(address)
    assert verdict is None or isinstance(verdict, str)
    text = host.strip("[]").split("%", 1)[0]
    try:
        as_aton = ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        as_aton = None
    # Whatever spelling: the address classified is the one a resolver would dial.
    assert address in {as_aton, *([ipaddress.ip_address(text)] if _is_ip(text) else [])}


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("host", corpus("hosts"))
def test_host_corpus(host: bytes) -> None:
    check_host(host.decode())


@FUZZ
@given(st.one_of(
    st.text(alphabet=st.sampled_from(list("0123456789abcdefx.:[]%")), max_size=40),
    st.ip_addresses().map(str),
    st.integers(0, 2**32 - 1).map(lambda n: st.sampled_from([str(n), hex(n), oct(n).replace("0o", "0")])).flatmap(lambda s: s),
))
def test_fuzz_host_spellings(host: str) -> None:
    check_host(host)


@FUZZ
@given(st.ip_addresses())
def test_fuzz_classify_every_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    verdict = classify(address)
    if address.is_loopback or address.is_private or address.is_link_local or address.is_multicast:
        assert verdict is not None, address


# -- settings, trace context, usage ------------------------------------------------------------

def check_settings(text: str, tmp_path: Path) -> None:
    config = tmp_path / "wardgate.toml"
    config.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        load_settings(config_file=config, environ={}, cwd=tmp_path)
    except ConfigError as error:
        assert error.code.startswith("config_")


@pytest.mark.parametrize("text", corpus("settings"))
def test_settings_corpus(text: bytes, tmp_path: Path) -> None:
    check_settings(text.decode(), tmp_path)


SETTING_KEYS = st.sampled_from(["[limits]", "[proxy]", "[egress]", "[opa]", "[identity]", "[audit]", "max_headers",
                                "burst", "timeout", "listen", "unsafe_allow_ranges", "version", "idle_timeout"])
SETTING_VALUES = st.one_of(st.integers(-2**40, 2**40).map(str), st.sampled_from(['"5m"', '"x"', "[]", '["::1/128"]', "true", "{}", "1e400"]))


@FUZZ
@given(pairs=st.lists(st.tuples(SETTING_KEYS, SETTING_VALUES), max_size=6))
def test_fuzz_settings(pairs: list[tuple[str, str]], tmp_path_factory: pytest.TempPathFactory) -> None:
    text = "".join(f"{key}\n" if key.startswith("[") else f"{key} = {value}\n" for key, value in pairs)
    check_settings(text, tmp_path_factory.mktemp("settings"))


@FUZZ
@given(st.text(max_size=80))
def test_fuzz_traceparent(value: str) -> None:
    trace_id = trace_id_of(value)
    assert trace_id is None or (len(trace_id) == 32 and set(trace_id) <= set("0123456789abcdef"))


@FUZZ
@given(st.sampled_from(["application/json", "text/event-stream", None, "text/plain"]),
       st.one_of(st.binary(max_size=200), st.recursive(st.none() | st.integers() | st.text(max_size=5),
                                                        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["usage", "input_tokens", "prompt_tokens", "data", "x"]), c, max_size=3)).map(lambda v: __import__("json").dumps(v).encode())))
def test_fuzz_usage_extraction(content_type: str | None, body: bytes) -> None:
    """Upstream response bodies are hostile too: usage extraction returns a dict or None, never raises."""
    usage = extract_usage(content_type, body)
    assert usage is None or isinstance(usage, dict)
