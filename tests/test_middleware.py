"""The access line of RequestContextMiddleware (fast rule tests, no model)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from genai_service.middleware import RequestContextMiddleware

SCOPE = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}


async def receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}


async def send(message: dict[str, Any]) -> None:
    pass


async def access_status(app: Any) -> int:
    with capture_logs() as logs, pytest.raises(asyncio.CancelledError):
        await RequestContextMiddleware(app)(dict(SCOPE), receive, send)
    (line,) = [entry for entry in logs if entry["event"] == "request"]
    return line["status"]


async def test_a_client_that_left_before_the_answer_is_logged_499() -> None:
    async def cancelled_while_generating(scope: Any, receive: Any, send: Any) -> None:
        raise asyncio.CancelledError  # what the disconnect watcher does to the request

    assert await access_status(cancelled_while_generating) == 499


async def test_a_stream_cut_after_it_started_keeps_its_status() -> None:
    async def streaming_then_cancelled(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise asyncio.CancelledError

    assert await access_status(streaming_then_cancelled) == 200
