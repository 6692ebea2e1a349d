"""Token usage reported by LLM APIs, read from the response an upstream sent back.

Recognised shapes (by content, not by host, so self-hosted and proxied endpoints count too):

- OpenAI-style JSON: ``{"model", "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}``
  (chat completions) or ``{"usage": {"input_tokens", "output_tokens", "total_tokens"}}`` (responses API);
- OpenAI-style SSE: ``data: {...}`` chunks, the one carrying ``usage`` (``stream_options.include_usage``),
  ``data: [DONE]`` ignored; the responses API's ``response.completed`` event carries ``response.usage``;
- Anthropic-style JSON: ``{"type": "message", "model", "usage": {"input_tokens", "output_tokens"}}``;
- Anthropic-style SSE: ``message_start`` (``message.usage.input_tokens``) then ``message_delta``
  (``usage.output_tokens``, cumulative).

Returns ``{"provider", "model", "input_tokens", "output_tokens", "total_tokens"}`` or None.
"""

from __future__ import annotations

import json
from typing import Any

MAX_BODY = 16 * 1024 * 1024  # larger bodies are not LLM answers worth parsing on the proxy path


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _from_usage(usage: Any, model: Any, provider: str) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None
    cache = (_int(usage.get("cache_creation_input_tokens")) or 0) + (_int(usage.get("cache_read_input_tokens")) or 0)
    input_tokens = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
    output_tokens = _int(usage.get("completion_tokens", usage.get("output_tokens")))
    if input_tokens is None and output_tokens is None:
        return None
    if provider == "anthropic" and input_tokens is not None:
        input_tokens += cache
    total = _int(usage.get("total_tokens"))
    if total is None:
        total = (input_tokens or 0) + (output_tokens or 0)
    return {"provider": provider, "model": model if isinstance(model, str) else None,
            "input_tokens": input_tokens, "output_tokens": output_tokens, "total_tokens": total}


def _from_json(doc: Any) -> dict[str, Any] | None:
    if not isinstance(doc, dict):
        return None
    if doc.get("type") == "message":
        return _from_usage(doc.get("usage"), doc.get("model"), "anthropic")
    return _from_usage(doc.get("usage"), doc.get("model"), "openai")


def _from_sse(text: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = None
    anthropic: dict[str, Any] = {}
    for line in text.splitlines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if not data or data == "[DONE]":
            continue
        try:
            event = json.loads(data)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        kind = event.get("type")
        if kind == "message_start" and isinstance(event.get("message"), dict):
            message = event["message"]
            anthropic["model"] = message.get("model")
            anthropic.update({k: v for k, v in (message.get("usage") or {}).items()})
        elif kind == "message_delta" and isinstance(event.get("usage"), dict):
            anthropic.update(event["usage"])
        elif kind == "response.completed" and isinstance(event.get("response"), dict):
            found = _from_json(event["response"]) or found
        elif event.get("usage"):
            found = _from_usage(event["usage"], event.get("model"), "openai") or found
    if anthropic:
        return _from_usage(anthropic, anthropic.pop("model", None), "anthropic")
    return found


def _media(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def may_report_usage(content_type: str | None) -> bool:
    """Whether a body of this media type is one extract_usage reads (JSON or an event stream), so
    that callers decode only those."""
    media = _media(content_type)
    return media in ("text/event-stream", "application/json") or media.endswith("+json")


def extract_usage(content_type: str | None, body: bytes | None) -> dict[str, Any] | None:
    """The usage an LLM API reported in ``body``, or None when it is not such a response."""
    if not body or len(body) > MAX_BODY or not may_report_usage(content_type):
        return None
    # Every recognised shape has a "usage" key; without those bytes (or a \u escape, or the NULs
    # of UTF-16/32 JSON, that could spell them) there is nothing to find, and a response that
    # cannot hold usage is not worth a JSON parse on the proxy's event loop.
    if b"usage" not in body and b"\\u" not in body and b"\x00" not in body:
        return None
    try:
        if _media(content_type) == "text/event-stream":
            return _from_sse(body.decode("utf-8", "replace"))
        return _from_json(json.loads(body))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
