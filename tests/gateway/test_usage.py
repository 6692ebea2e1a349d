"""Token usage from LLM API responses: a table of real-shaped bodies, JSON and SSE."""

from __future__ import annotations

import json

import pytest

from wardgate.gateway.usage import extract_usage


def sse(*events: object, done: bool = False) -> bytes:
    lines = [f"data: {json.dumps(e)}\n\n" for e in events] + (["data: [DONE]\n\n"] if done else [])
    return "".join(lines).encode()


def anthropic_sse(input_tokens: int, output_tokens: int) -> bytes:
    return b"".join([
        b"event: message_start\n" + sse({"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "model": "claude-x", "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}),
        b"event: content_block_delta\n" + sse({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "hi"}}),
        b"event: message_delta\n" + sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                         "usage": {"output_tokens": output_tokens}}),
        b"event: message_stop\n" + sse({"type": "message_stop"}),
    ])


CASES = [
    ("openai chat json", "application/json",
     json.dumps({"object": "chat.completion", "model": "gpt-x", "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}).encode(),
     {"provider": "openai", "model": "gpt-x", "input_tokens": 12, "output_tokens": 5, "total_tokens": 17}),
    ("openai responses json", "application/json; charset=utf-8",
     json.dumps({"object": "response", "model": "gpt-y", "usage": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}}).encode(),
     {"provider": "openai", "model": "gpt-y", "input_tokens": 3, "output_tokens": 4, "total_tokens": 7}),
    ("openai chat sse with include_usage", "text/event-stream",
     sse({"model": "gpt-x", "choices": [{"delta": {"content": "a"}}], "usage": None},
         {"model": "gpt-x", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}, done=True),
     {"provider": "openai", "model": "gpt-x", "input_tokens": 9, "output_tokens": 2, "total_tokens": 11}),
    ("openai responses sse", "text/event-stream",
     sse({"type": "response.output_text.delta", "delta": "a"},
         {"type": "response.completed", "response": {"model": "gpt-z", "usage": {"input_tokens": 5, "output_tokens": 6, "total_tokens": 11}}}),
     {"provider": "openai", "model": "gpt-z", "input_tokens": 5, "output_tokens": 6, "total_tokens": 11}),
    ("anthropic json", "application/json",
     json.dumps({"type": "message", "model": "claude-x", "usage": {"input_tokens": 20, "output_tokens": 8,
                                                                    "cache_read_input_tokens": 100}}).encode(),
     {"provider": "anthropic", "model": "claude-x", "input_tokens": 120, "output_tokens": 8, "total_tokens": 128}),
    ("anthropic sse", "text/event-stream", anthropic_sse(25, 40),
     {"provider": "anthropic", "model": "claude-x", "input_tokens": 25, "output_tokens": 40, "total_tokens": 65}),
    ("plain json without usage", "application/json", b'{"ok": true}', None),
    ("usage that is not token counts", "application/json", b'{"usage": {"cpu": "high"}}', None),
    ("html", "text/html", b"<html>usage</html>", None),
    ("broken json", "application/json", b'{"usage": {', None),
    ("sse without usage", "text/event-stream", sse({"choices": []}, done=True), None),
    ("empty", "application/json", b"", None),
]


@pytest.mark.parametrize(("name", "content_type", "body", "expected"), CASES, ids=[c[0] for c in CASES])
def test_extract_usage(name: str, content_type: str, body: bytes, expected: dict | None) -> None:
    assert extract_usage(content_type, body) == expected
