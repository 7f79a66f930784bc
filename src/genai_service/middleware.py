"""Pure ASGI middleware (no BaseHTTPMiddleware: it breaks streaming and disconnect detection)."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genai_service.api.errors import APIError, shutting_down
from genai_service.serving.shutdown import Shutdown

log = structlog.get_logger("genai_service.access")


class RequestContextMiddleware:
    """Gives each request an id (kept from `X-Request-ID` if sent) and logs one access line.

    The line has method, path, status and duration; never headers, so keys stay out of logs.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        supplied = headers.get(b"x-request-id", b"").decode("latin-1")[:64]
        request_id = supplied if supplied.isprintable() and supplied else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status: int | None = None  # set when the answer starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = [(b"x-request-id", request_id.encode())]
                # A quota'd key's x-ratelimit-* headers (api/auth.py), on every response.
                for name, value in scope["state"].get("ratelimit_headers", {}).items():
                    extra.append((name.encode(), value.encode()))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            if status is None:
                status = 499  # the client went away before an answer (nginx's code for it)
            raise
        finally:
            path = scope.get("path", "")
            if not path.startswith("/health"):
                log.info(
                    "request",
                    method=scope.get("method"),
                    path=path,
                    status=500 if status is None else status,  # none: uvicorn's 500
                    ms=round((time.perf_counter() - started) * 1000, 1),
                    request_id=request_id,
                )


DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024

# A JSON escape that may spell half of a UTF-16 surrogate pair (\ud800-\udfff), or NUL.
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:[dD][89a-fA-F]|0000)")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _unstorable_char(value: Any) -> str | None:
    """The first lone surrogate or NUL in any string of a parsed JSON document (keys too).

    `json.loads` joins a valid escaped pair into one code point, so any surrogate left in a
    string is a lone one. Iterative: a deeply nested document cannot exhaust the stack.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found = _UNSTORABLE.search(item)
            if found:
                return found.group()
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def body_problem(body: bytes, content_type: str = "application/json") -> str | None:
    """Why a request body cannot be accepted as text, or None.

    Lone surrogates (`"\\ud800"` in JSON, or raw CESU-8 bytes) are valid JSON but not
    Unicode: no engine can encode them and no database or JSON response can hold them.
    NUL (`"\\u0000"`) is Unicode, but Postgres text cannot hold it and no prompt needs it.
    """
    if content_type and "json" not in content_type:
        return None  # not text this service parses; the route says what it expects
    try:
        body.decode("utf-8")  # strict: raw surrogate bytes (CESU-8) are not UTF-8
    except UnicodeDecodeError as exc:
        return f"The request body is not valid UTF-8 (byte {exc.start})."
    if not _SUSPECT_ESCAPE.search(body):
        return None  # the common case: no escape that could spell a surrogate or NUL
    try:
        document = json.loads(body)
    except ValueError:
        return None  # malformed JSON: the route's parser answers that with its own 400
    found = _unstorable_char(document)
    if found == "\x00":
        return 'The request contains a NUL character ("\\u0000"), which is not accepted.'
    if found is not None:
        return (
            'The request contains a lone UTF-16 surrogate (such as "\\ud800"), '
            "which is not valid Unicode text."
        )
    return None


def url_problem(scope: Scope) -> str | None:
    """NUL in the path or the query string (`%00`): no id or parameter here may hold one."""
    if "\x00" in scope.get("path", "") or b"%00" in scope.get("query_string", b""):
        return "The URL contains a NUL character (%00), which is not accepted."
    return None


class RequestBodyGuard:
    """Every request body passes here before any route sees it (pure ASGI).

    - Bodies over `max_bytes` answer 413 as soon as `Content-Length` or the bytes received
      say so, without reading the rest.
    - Text that is not valid Unicode (lone surrogates, bytes that are not UTF-8), or that
      holds NUL, in the body or the URL, answers 400 in the OpenAI error format, so it never
      reaches an engine or the database: nothing is stored for a rejected request.

    The body is then handed on unchanged; after it, `receive` is the server's own again, so
    disconnect detection works as before.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = url_problem(scope)
        if problem is not None:
            await self._reject(scope, receive, send, APIError(400, problem, code="invalid_value"))
            return
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").strip()
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send, self._too_large())
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before the body was in
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(scope, receive, send, self._too_large())
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
        problem = body_problem(body, content_type) if body else None
        if problem is not None:
            error = APIError(400, problem, code="invalid_unicode")
            await self._reject(scope, receive, send, error)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self) -> APIError:
        return APIError(
            413,
            f"The request body is larger than the limit of {self.max_bytes} bytes.",
            code="request_too_large",
            headers={"Connection": "close"},  # the rest of the body is never read
        )

    @staticmethod
    async def _reject(scope: Scope, receive: Receive, send: Send, error: APIError) -> None:
        await error.response()(scope, receive, send)


class ReadyGate:
    """Holds HTTP requests (not the health probes) until the model is ready, for hosts that send
    the first request as soon as the process starts (serverless functions: deploy/)."""

    def __init__(self, app: Any, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith("/health"):
            await self.wait_ready()
        await self.app(scope, receive, send)

    async def wait_ready(self) -> None:
        service = self.app.state.service
        deadline = time.monotonic() + self.timeout
        while not service.ready and time.monotonic() < deadline:
            if "failed" in service.reason:
                return  # let the app answer 503 with the reason
            await asyncio.sleep(0.05)


class DrainGate:
    """From SIGTERM on, new requests get 503 with Retry-After (serving/shutdown.py); it counts
    the requests in flight, which the drain waits for. Probes and /metrics pass: readiness
    says 503 itself, and Prometheus keeps scraping a draining pod."""

    def __init__(self, app: ASGIApp, shutdown: Shutdown) -> None:
        self.app = app
        self.shutdown = shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith("/health") or path == "/metrics":
            await self.app(scope, receive, send)
            return
        if self.shutdown.draining:
            await shutting_down().response()(scope, receive, send)
            return
        self.shutdown.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.shutdown.leave()
