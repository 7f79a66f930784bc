"""Caps on what one request may ask the engine to read: MAX_MESSAGES and MAX_MESSAGE_CHARS.

One dependency for every JSON route, on the body FastAPI already parsed (Starlette caches it),
so the caps hold for chat messages, responses and embeddings `input`, completions `prompt`,
conversation turns and tokenize alike, and a request over them never reaches an engine:
- `messages`, `input` and `prompt` arrays hold at most MAX_MESSAGES items;
- one item (all of its text together, content parts included), and any other text field,
  holds at most MAX_MESSAGE_CHARS characters.
Both answer 413 in the OpenAI error format, with OpenAI's codes for the same checks.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from genai_service.api.deps import State
from genai_service.api.errors import APIError

LISTS = ("messages", "input", "prompt")


def _chars(value: Any) -> int:
    """All the text in a JSON value, in characters; iterative, so nesting cannot overflow."""
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return total


def _too_long(param: str, limit: int, size: int) -> APIError:
    return APIError(
        413,
        f"Invalid '{param}': text too long. Expected at most {limit} characters, "
        f"but got {size} (MAX_MESSAGE_CHARS).",
        param=param,
        code="string_above_max_length",
    )


def check_body(body: Any, max_messages: int, max_chars: int) -> None:
    if not isinstance(body, dict):
        return
    for name, value in body.items():
        if isinstance(value, list) and name in LISTS:
            if len(value) > max_messages:
                raise APIError(
                    413,
                    f"Invalid '{name}': array too long. Expected at most {max_messages} "
                    f"items, but got {len(value)} (MAX_MESSAGES).",
                    param=name,
                    code="array_above_max_length",
                )
            for i, item in enumerate(value):
                size = _chars(item)
                if size > max_chars:
                    raise _too_long(f"{name}[{i}]", max_chars, size)
        else:
            size = _chars(value)
            if size > max_chars:
                raise _too_long(name, max_chars, size)


async def message_limits(request: Request, state: State) -> None:
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    content_type = request.headers.get("content-type", "")
    if content_type and "json" not in content_type:
        return  # FastAPI parses only JSON (or untyped) bodies; others fail its validation
    try:
        body = await request.json()  # the parse FastAPI did (or will reuse)
    except (ValueError, UnicodeDecodeError):
        return  # malformed JSON: the route's parser answers that with its own 400
    settings = state.settings
    check_body(body, settings.max_messages, settings.max_message_chars)
