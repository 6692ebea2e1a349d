"""MCP over Streamable HTTP, as the gateway sees it: protocol logic only, no I/O.

Supported revisions: ``2026-07-28`` (current) and ``2025-11-25`` (previous). Both forbid JSON-RPC
batches (removed in 2025-06-18), so a batch is refused. A POST body is parsed once, strictly:

- larger than ``max_bytes``                      → 413 ``mcp_body_too_large``
- not UTF-8 / not JSON / NaN or Infinity         → 400 ``mcp_body_invalid``      (JSON-RPC -32700)
- a key repeated in one object                   → 400 ``mcp_duplicate_key``     (JSON-RPC -32700)
- nested deeper than ``max_depth``               → 400 ``mcp_body_too_deep``     (JSON-RPC -32600)
- a batch (top-level array)                      → 400 ``mcp_batch_not_allowed`` (JSON-RPC -32600)
- not a JSON-RPC 2.0 request/notification/response → 400 ``mcp_message_invalid`` (JSON-RPC -32600)

Duplicate keys matter because parsers disagree on which one wins: the policy must judge the very
method and tool the server will execute.

The 2026-07-28 revision (SEP-2243) mirrors the method and target into ``Mcp-Method`` and
``Mcp-Name`` and requires servers to reject a request whose headers are missing, malformed or
disagree with the body with HTTP 400 and JSON-RPC ``-32020`` (HeaderMismatch). The gateway applies
the same rule, and under any revision refuses a header that is present but disagrees with the body
(``mcp_header_mismatch``): infrastructure that routes on the header must not see a different call
than the server runs.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .errors import BadRequest, ErrorResponse, PayloadTooLarge, WardgateError, to_response

CURRENT_REVISION = "2026-07-28"
PREVIOUS_REVISION = "2025-11-25"
SUPPORTED_REVISIONS = (CURRENT_REVISION, PREVIOUS_REVISION)
META_PROTOCOL_VERSION = "io.modelcontextprotocol/protocolVersion"

# JSON-RPC 2.0 and MCP error codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INTERNAL_ERROR = -32603
HEADER_MISMATCH = -32020
# wardgate's own, in JSON-RPC's implementation-defined server-error range (-32000..-32099),
# clear of the codes MCP reserves (-32002, -32020, -32022, -32042).
POLICY_DENIED = -32060
IDENTITY_REFUSED = -32061
RATE_LIMITED = -32062
GATEWAY_UNAVAILABLE = -32063

_RPC_CODES = {
    "mcp_body_invalid": PARSE_ERROR,
    "mcp_duplicate_key": PARSE_ERROR,
    "mcp_header_mismatch": HEADER_MISMATCH,
}
_RPC_BY_STATUS = {400: INVALID_REQUEST, 413: INVALID_REQUEST, 403: POLICY_DENIED, 407: IDENTITY_REFUSED,
                  429: RATE_LIMITED, 503: GATEWAY_UNAVAILABLE}

# Methods that mark an undeclared JSON-RPC body as MCP (other JSON-RPC APIs pass as plain HTTP).
MCP_METHODS = frozenset({
    "initialize", "ping", "server/discover", "tools/list", "tools/call", "resources/list",
    "resources/read", "resources/templates/list", "resources/subscribe", "resources/unsubscribe",
    "prompts/list", "prompts/get", "completion/complete", "logging/setLevel", "subscriptions/listen",
    "sampling/createMessage", "elicitation/create", "roots/list",
})
# Methods whose target is mirrored into Mcp-Name, and the parameter it comes from.
_NAME_PARAM = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri",
               "resources/subscribe": "uri", "resources/unsubscribe": "uri"}

Kind = Literal["request", "notification", "response"]


def is_mcp_method(method: object) -> bool:
    return isinstance(method, str) and (
        method in MCP_METHODS or method.startswith(("notifications/", "tasks/"))
    )


@dataclass(frozen=True, slots=True)
class McpMessage:
    """One JSON-RPC message a client posted to an MCP server."""

    kind: Kind
    id: str | int | None
    method: str | None
    params: Mapping[str, Any]
    protocol_version: str | None

    @property
    def tool(self) -> str | None:
        return self.params.get("name") if self.method == "tools/call" else None

    @property
    def arguments(self) -> dict[str, Any] | None:
        if self.method != "tools/call":
            return None
        return dict(self.params.get("arguments") or {})


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _depth(value: Any) -> int:
    """Nesting depth, iteratively (a recursive walk could itself be the overflow)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children: Iterable[Any] = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def parse_body(body: bytes, *, max_bytes: int, max_depth: int) -> Any:
    """Strict JSON: size, UTF-8, no duplicate keys, no NaN/Infinity, bounded depth."""
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"the MCP message is larger than {max_bytes} bytes", code="mcp_body_too_large")
    try:
        text = body.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except _DuplicateKey:
        raise BadRequest("the MCP message repeats a key in one object", code="mcp_duplicate_key") from None
    except RecursionError:
        raise BadRequest(f"the MCP message is nested deeper than {max_depth}", code="mcp_body_too_deep") from None
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the MCP message is not valid JSON", code="mcp_body_invalid") from None
    if _depth(value) > max_depth:
        raise BadRequest(f"the MCP message is nested deeper than {max_depth}", code="mcp_body_too_deep")
    return value


def looks_like_mcp(value: Any) -> bool:
    """Body shape: a JSON-RPC message (or batch of them) calling an MCP method."""
    items = value if isinstance(value, list) else [value]
    return any(isinstance(item, dict) and "jsonrpc" in item and is_mcp_method(item.get("method")) for item in items)


def _invalid(message: str) -> BadRequest:
    return BadRequest(message, code="mcp_message_invalid")


def _mismatch(message: str) -> BadRequest:
    return BadRequest(message, code="mcp_header_mismatch")


def decode_header_value(value: str) -> str:
    """SEP-2243 carries values that are not plain ASCII as ``=?base64?<b64 of UTF-8>?=``."""
    if value.startswith("=?base64?") and value.endswith("?="):
        try:
            return base64.b64decode(value[9:-2], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise _mismatch("an Mcp-* header carries malformed base64") from None
    return value


def to_message(value: Any, headers: Mapping[str, str]) -> McpMessage:
    """Check ``value`` is one JSON-RPC 2.0 message and that MCP headers agree with it.

    ``headers`` are lower-cased names. Raises ``BadRequest`` with the codes in the module doc.
    """
    if isinstance(value, list):
        raise BadRequest(
            "JSON-RPC batches are not allowed in MCP since revision 2025-06-18", code="mcp_batch_not_allowed"
        )
    if not isinstance(value, dict) or value.get("jsonrpc") != "2.0":
        raise _invalid("the body is not a JSON-RPC 2.0 message")
    request_id = value.get("id")
    has_id = "id" in value
    if has_id and (request_id is None or isinstance(request_id, bool) or not isinstance(request_id, (str, int))):
        raise _invalid("a JSON-RPC id must be a string or an integer")
    params = value.get("params", {})
    if not isinstance(params, dict):
        raise _invalid("MCP params must be an object")
    if "method" in value:
        method = value["method"]
        if not isinstance(method, str) or not method:
            raise _invalid("a JSON-RPC method must be a non-empty string")
        if "result" in value or "error" in value:
            raise _invalid("a JSON-RPC message cannot be both a request and a response")
        kind: Kind = "request" if has_id else "notification"
    elif has_id and (("result" in value) != ("error" in value)):
        method, kind = None, "response"
    else:
        raise _invalid("the body is neither a JSON-RPC request, notification nor response")
    if method == "tools/call":
        if not isinstance(params.get("name"), str) or not params["name"]:
            raise _invalid("tools/call needs params.name (a string)")
        if not isinstance(params.get("arguments", {}), dict):
            raise _invalid("tools/call params.arguments must be an object")
    version = _check_headers(method, params, headers)
    return McpMessage(kind, request_id, method, params, version)


def _check_headers(method: str | None, params: Mapping[str, Any], headers: Mapping[str, str]) -> str | None:
    header_version = headers.get("mcp-protocol-version")
    meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else {}
    meta_version = meta.get(META_PROTOCOL_VERSION)
    if header_version and meta_version is not None and meta_version != header_version:
        raise _mismatch("MCP-Protocol-Version does not match the protocol version in _meta")
    version = header_version or (meta_version if isinstance(meta_version, str) else None)
    if method is None:
        return version
    strict = version == CURRENT_REVISION
    header_method = headers.get("mcp-method")
    if header_method is None:
        if strict:
            raise _mismatch("the Mcp-Method header is required by MCP 2026-07-28")
    elif decode_header_value(header_method) != method:
        raise _mismatch("the Mcp-Method header does not match the method in the body")
    param = _NAME_PARAM.get(method)
    expected = params.get(param) if param else None
    header_name = headers.get("mcp-name")
    if header_name is None:
        if strict and isinstance(expected, str):
            raise _mismatch("the Mcp-Name header is required for this method by MCP 2026-07-28")
    elif decode_header_value(header_name) != expected:
        raise _mismatch("the Mcp-Name header does not match the name in the body")
    return version


REDACTED = "[redacted]"


def redact(arguments: Mapping[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    """A copy of ``arguments`` with each dot-separated path (``"auth.token"``) replaced by a marker."""
    result = json.loads(json.dumps(arguments))
    for path in paths:
        node = result
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and parts[-1] in node:
            node[parts[-1]] = REDACTED
    return result


def rpc_code(error: WardgateError) -> int:
    return _RPC_CODES.get(error.code, _RPC_BY_STATUS.get(error.status, INTERNAL_ERROR))


def error_reply(error: WardgateError, audit_id: str | None, request_id: str | int | None) -> ErrorResponse:
    """The JSON-RPC error an MCP client surfaces to the model, in place of wardgate's JSON error.

    A request with an id gets HTTP 200 for policy, identity and dependency refusals: MCP clients
    raise on any other status instead of showing the error. Protocol errors keep 400/413 (the
    spec requires 400 for HeaderMismatch), and so does anything answering a notification.
    """
    plain = to_response(error, audit_id)
    status = error.status
    if request_id is not None and status not in (400, 413):
        status = 200
    body = {
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {
            "code": rpc_code(error),
            "message": f"wardgate: {error.message} ({error.code})",
            "data": {"code": error.code, "reasons": error.reasons, "audit_id": audit_id},
        },
    }
    headers = {k: v for k, v in plain.headers.items() if k != "Proxy-Authenticate"}
    return ErrorResponse(status, headers, json.dumps(body, separators=(",", ":")).encode() + b"\n")


# --- responses -----------------------------------------------------------------------------------


@dataclass(slots=True)
class SseEvent:
    """One Server-Sent Event, kept as its raw lines so untouched events are relayed byte for byte."""

    lines: list[str]

    @property
    def data(self) -> str | None:
        values = [line[5:].removeprefix(" ") for line in self.lines if line.startswith("data:")]
        return "\n".join(values) if values else None

    def with_data(self, data: str) -> "SseEvent":
        kept = [line for line in self.lines if not line.startswith("data:")]
        return SseEvent(kept + [f"data: {line}" for line in data.split("\n")])

    def encode(self) -> bytes:
        return ("\n".join(self.lines) + "\n\n").encode()


class SseSplitter:
    """Feeds bytes in, yields complete events out; the tail waits for the rest of its event."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[SseEvent]:
        self._buffer += data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events = []
        while b"\n\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n\n", 1)
            events.append(SseEvent(raw.decode("utf-8", errors="replace").split("\n")))
        return events

    def rest(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        return rest


def tool_names(result: Any) -> list[str]:
    tools = result.get("tools") if isinstance(result, dict) else None
    if not isinstance(tools, list):
        return []
    return [t["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]


def filter_tools(message: Any, allowed: set[str]) -> Any:
    """A JSON-RPC ``tools/list`` response with only the tools in ``allowed``."""
    if not isinstance(message, dict) or not isinstance(message.get("result"), dict):
        return message
    result = dict(message["result"])
    tools = result.get("tools")
    if isinstance(tools, list):
        result["tools"] = [t for t in tools if isinstance(t, dict) and t.get("name") in allowed]
    return {**message, "result": result}
