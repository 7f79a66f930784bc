"""Every error a client can meet comes in the OpenAI format and never carries a trace."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from genai_service.engines.base import Cancellation, GenerationChunk, Prompt, SamplingParams
from genai_service.engines.llama_cpp import LlamaCppEngine
from genai_service.model_store import embedded_model_path
from genai_service.settings import Settings
from tests.conftest import MODEL_ID, RunningServer, run_server


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"]
    assert "Traceback" not in response.text and 'File "' not in response.text
    return error  # type: ignore[no-any-return]


def test_malformed_json(server: RunningServer) -> None:
    with server.http() as http:
        response = http.post(
            "/v1/chat/completions",
            content=b'{"model": "x", "messages": [',
            headers={"content-type": "application/json"},
        )
    error = assert_openai_error(response, 400)
    assert error["code"] == "invalid_json"
    assert "JSON" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL_ID}, "messages"),
        ({"model": MODEL_ID, "messages": []}, "messages"),
        ({"model": MODEL_ID, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        (
            {"model": MODEL_ID, "messages": [{"role": "user", "content": "x"}], "temperature": 5},
            "temperature",
        ),
        (
            {"model": MODEL_ID, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            "max_tokens",
        ),
        ({"model": MODEL_ID, "messages": [{"role": "user", "content": "x"}], "top_p": 0}, "top_p"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ],
)
def test_validation_errors(server: RunningServer, body: dict[str, Any], param: str) -> None:
    with server.http() as http:
        response = http.post("/v1/chat/completions", json=body)
    error = assert_openai_error(response, 400)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_prompt_longer_than_context_says_the_limit(
    server: RunningServer, client: openai.OpenAI
) -> None:
    limit = server.state.settings.n_ctx
    long_text = "word " * (limit + 100)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": long_text}]
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "context_length_exceeded"
    assert str(limit) in error["message"]
    with pytest.raises(openai.BadRequestError) as too_many:
        client.completions.create(model=MODEL_ID, prompt="Hi", max_tokens=limit)
    assert too_many.value.body["code"] == "context_length_exceeded"  # type: ignore[index]


def test_unknown_route_and_method(server: RunningServer) -> None:
    with server.http() as http:
        assert_openai_error(http.get("/v1/nothing-here"), 404)
        assert_openai_error(http.get("/v1/chat/completions"), 405)


class ExplodingEngine(LlamaCppEngine):
    """Fails mid-generation: the rare path where an engine raises."""

    async def stream(  # type: ignore[override]
        self, prompt: Prompt, params: SamplingParams, cancel: Cancellation | None = None
    ) -> AsyncIterator[GenerationChunk]:
        yield GenerationChunk(text="partial")
        raise RuntimeError("secret internal detail /opt/venv/lib/site.py line 1")


def exploding_factory(settings: Settings) -> LlamaCppEngine:
    return ExplodingEngine(embedded_model_path(), model_id=MODEL_ID, n_ctx=settings.n_ctx)


def test_engine_failure_is_500_without_trace() -> None:
    with run_server(engine_factory=exploding_factory, warmup=False) as broken:
        with broken.http() as http:
            response = http.post(
                "/v1/chat/completions",
                json={"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}]},
            )
            error = assert_openai_error(response, 500)
            assert "secret internal detail" not in response.text
            assert error["type"] == "server_error"
            # In a stream the headers are already sent: the error arrives as an SSE event.
            stream = http.post(
                "/v1/chat/completions",
                json={
                    "model": MODEL_ID,
                    "stream": True,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            )
            assert '"error"' in stream.text
            assert "secret internal detail" not in stream.text
        with pytest.raises(openai.APIError):
            list(
                broken.openai().chat.completions.create(
                    model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], stream=True
                )
            )
