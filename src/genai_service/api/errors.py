"""Errors in the OpenAI format: `{"error": {"message", "type", "param", "code"}}`.

Every failure a client can see goes through here, so none of them ever carries a stack trace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from genai_service.engines.base import EngineHTTPError

log = structlog.get_logger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "service_unavailable",
}


class APIError(Exception):
    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status_code, "invalid_request_error")
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status_code, headers=self.headers)


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# Errors raised by the API layer, named so routes read as prose.
def unauthorized(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def model_not_found(model: str) -> APIError:
    return APIError(
        404, f"The model '{model}' does not exist.", param="model", code="model_not_found"
    )


def not_ready(reason: str, retry_after: int = 5) -> APIError:
    return APIError(
        503,
        f"The service is not ready: {reason}.",
        code="not_ready",
        headers={"Retry-After": str(retry_after)},
    )


def load_failed(reason: str) -> APIError:
    """The model failed to load: no Retry-After, since a retry meets the same failure."""
    return APIError(503, f"The service cannot serve: {reason}.", code="model_load_failed")


def engine_unavailable(message: str) -> APIError:
    """The engine process crashed and restarts: a retry in a moment will be served."""
    return APIError(503, message, code="engine_unavailable", headers={"Retry-After": "1"})


def shutting_down() -> APIError:
    """SIGTERM came: this replica finishes what it has and takes nothing new (the load
    balancer sends the retry to another one). `Connection: close` frees the client's pooled
    connection to it."""
    return APIError(
        503,
        "The server is shutting down and takes no new requests: retry the request.",
        code="server_shutting_down",
        headers={"Retry-After": "1", "Connection": "close"},
    )


def busy(retry_after: int) -> APIError:
    return APIError(
        429,
        "The server is busy: all generation slots and queue places are taken. "
        f"Retry after {retry_after} s.",
        code="server_busy",
        headers={"Retry-After": str(retry_after)},
    )


def _param(loc: Sequence[int | str]) -> str | None:
    # FastAPI prefixes body fields with "body" and queries with "query".
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "invalid JSON")
        return APIError(400, f"Malformed JSON body: {detail}.", code="invalid_json").response()
    messages = []
    for err in errors:
        where = _param(err.get("loc", ()))
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        messages.append(f"{where}: {msg}" if where else msg)
    return APIError(
        400,
        "; ".join(messages) or "Invalid request.",
        param=_param(first.get("loc", ())),
        code="invalid_value",
    ).response()


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else "Request failed."
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"No route for {request.method} {request.url.path}."
    return APIError(exc.status_code, detail, headers=exc.headers).response()


def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return exc.response()


def _engine_http_error(request: Request, exc: Exception) -> JSONResponse:
    # An upstream model server's error, already sorted into the client's fault or ours.
    assert isinstance(exc, EngineHTTPError)
    return APIError(exc.status_code, exc.message, code=exc.code or "upstream_error").response()


def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    # Logged in full on the server; the client gets a request id to quote, not the trace.
    # This handler runs in Starlette's outermost middleware, outside RequestContextMiddleware,
    # so it sets X-Request-ID itself; and the server closes the connection after it (the
    # error is re-raised), so it says `Connection: close` and clients do not reuse it.
    request_id = getattr(request.state, "request_id", None)
    log.exception("unhandled_error", path=request.url.path, request_id=request_id)
    headers = {"Connection": "close"} | ({"X-Request-ID": request_id} if request_id else {})
    return APIError(
        500,
        "The server had an error while processing your request."
        + (f" Request id: {request_id}." if request_id else ""),
        code="internal_error",
        headers=headers,
    ).response()


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(EngineHTTPError, _engine_http_error)
    app.add_exception_handler(Exception, _unhandled)
