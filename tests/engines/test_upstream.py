"""Upstream engine: this service in front of a second instance of itself on loopback (a real
OpenAI-compatible server with the real SmolLM2 and MiniLM models), plus a fake upstream only
for the retry paths (429 and 5xx), which a healthy server does not produce on demand."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from genai_service.engines.base import EngineHTTPError, SamplingParams, collect
from genai_service.engines.upstream import UpstreamEngine
from tests.conftest import MODEL_ID, RunningServer, free_port, make_settings, run_server
from tests.fakes import FakeEngine

UPSTREAM_KEY = "sk-upstream-secret"


@pytest.fixture(scope="module")
def upstream(minilm_cache: Path) -> Iterator[RunningServer]:
    with run_server(
        embedding_model="minilm", model_cache_dir=minilm_cache, api_keys=UPSTREAM_KEY
    ) as server:
        yield server


@pytest.fixture(scope="module")
def front(
    upstream: RunningServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    # The key reaches the engine the way Docker mounts secrets: a file named after the setting.
    secrets = tmp_path_factory.mktemp("secrets")
    (secrets / "openai_api_token").write_text(UPSTREAM_KEY)
    settings = make_settings(
        _secrets_dir=secrets,
        engine="upstream",
        model=MODEL_ID,
        upstream_base_url=f"{upstream.base_url}/v1",
        extra_models=[{"model": "all-MiniLM-L6-v2", "engine": "upstream", "kind": "embedding"}],
    )
    assert settings.openai_api_token is not None
    with run_server(settings) as server:
        yield server


def test_models_are_listed_and_routed(front: RunningServer) -> None:
    ids = [m.id for m in front.openai().models.list().data]
    assert ids == [MODEL_ID, "all-MiniLM-L6-v2"]
    assert front.state.engines[MODEL_ID].info.engine == "upstream"


def test_chat_passes_through(front: RunningServer, upstream: RunningServer) -> None:
    request = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 12,
        "temperature": 0,
        "seed": 1,
    }
    direct = upstream.openai(api_key=UPSTREAM_KEY).chat.completions.create(**request)
    proxied = front.openai().chat.completions.create(**request)
    assert proxied.model == MODEL_ID
    assert proxied.choices[0].message.content == direct.choices[0].message.content
    assert proxied.usage is not None and direct.usage is not None
    assert proxied.usage.prompt_tokens == direct.usage.prompt_tokens
    assert proxied.choices[0].finish_reason == direct.choices[0].finish_reason

    chunks = list(
        front.openai().chat.completions.create(
            **request, stream=True, stream_options={"include_usage": True}
        )
    )
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) > 1  # streamed piece by piece, not buffered
    assert "".join(pieces) == direct.choices[0].message.content
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == direct.usage.completion_tokens


def test_completions_and_embeddings_pass_through(
    front: RunningServer, upstream: RunningServer
) -> None:
    completion = front.openai().completions.create(
        model=MODEL_ID, prompt="The sky is", max_tokens=6, temperature=0
    )
    direct = upstream.openai(api_key=UPSTREAM_KEY).completions.create(
        model=MODEL_ID, prompt="The sky is", max_tokens=6, temperature=0
    )
    assert completion.choices[0].text == direct.choices[0].text

    texts = ["a cat on a mat", "stock markets fell"]
    proxied = front.openai().embeddings.create(model="all-MiniLM-L6-v2", input=texts)
    original = upstream.openai(api_key=UPSTREAM_KEY).embeddings.create(
        model="all-MiniLM-L6-v2", input=texts
    )
    assert np.allclose(
        [d.embedding for d in proxied.data], [d.embedding for d in original.data], atol=1e-6
    )
    assert proxied.usage.prompt_tokens == original.usage.prompt_tokens > 0


def test_upstream_client_errors_pass_through(front: RunningServer) -> None:
    # The upstream serves 2048 tokens of context; its 400 reaches the client unchanged.
    with pytest.raises(openai.BadRequestError) as caught:
        front.openai().chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=5000
        )
    assert caught.value.code == "context_length_exceeded"


def test_wrong_upstream_key_fails_readiness(upstream: RunningServer) -> None:
    settings = make_settings(
        engine="upstream",
        model=MODEL_ID,
        upstream_base_url=f"{upstream.base_url}/v1",
        openai_api_token="sk-wrong",
        upstream_max_retries=0,
    )
    with run_server(settings, wait=False) as server:
        deadline = time.monotonic() + 10
        while "failed" not in server.state.reason and time.monotonic() < deadline:
            time.sleep(0.02)
        response = server.http().get("/health/ready")
        assert response.status_code == 503
        assert "401" in response.json()["reason"]


def _ready_status(server: RunningServer, expected: int) -> httpx.Response:
    deadline = time.monotonic() + 20
    with server.http() as http:
        while True:
            response = http.get("/health/ready")
            if response.status_code == expected or time.monotonic() > deadline:
                return response
            time.sleep(0.05)


def test_readiness_follows_the_upstreams_health() -> None:
    # The upstream is a real second service on a fixed loopback port, stopped and started again;
    # it serves the fake engine, since only its availability matters here.
    port = free_port()
    request = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    with ExitStack() as stack:
        upstream_life = stack.enter_context(ExitStack())  # closed below: the upstream dies
        upstream = upstream_life.enter_context(
            run_server(engine_factory=lambda _: FakeEngine(), port=port)
        )
        settings = make_settings(
            engine="upstream",
            model="fake",
            upstream_base_url=f"{upstream.base_url}/v1",
            upstream_health_interval=0.1,
            upstream_max_retries=0,
        )
        front = stack.enter_context(run_server(settings))
        assert _ready_status(front, 200).status_code == 200

        upstream_life.close()
        down = _ready_status(front, 503)
        assert down.status_code == 503
        assert "does not answer" in down.json()["reason"]
        refused = front.http().post("/v1/chat/completions", json=request)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "engine_unavailable"

        stack.enter_context(run_server(engine_factory=lambda _: FakeEngine(), port=port))
        assert _ready_status(front, 200).status_code == 200
        answer = front.openai().chat.completions.create(**request)
        assert answer.choices[0].message.content


def test_an_upstream_down_at_start_is_waited_for_not_failed() -> None:
    port = free_port()
    settings = make_settings(
        engine="upstream",
        model="fake",
        upstream_base_url=f"http://127.0.0.1:{port}/v1",
        upstream_health_interval=0.1,
    )
    with run_server(settings) as front:
        assert front.state.ready and not front.state.failed
        assert _ready_status(front, 503).status_code == 503
        with run_server(engine_factory=lambda _: FakeEngine(), port=port):
            assert _ready_status(front, 200).status_code == 200


# --- retry paths, against a fake upstream -----------------------------------------------------
def _sse(*events: dict[str, object]) -> bytes:
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    return body.encode()


def _fake(statuses: list[int]) -> tuple[httpx.MockTransport, list[int]]:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": []})
        status = statuses[min(len(calls), len(statuses) - 1)]
        calls.append(status)
        if status != 200:
            return httpx.Response(
                status,
                json={"error": {"message": "slow down", "code": None}},
                headers={"Retry-After": "0"} if status == 429 else {},
            )
        assert request.headers["authorization"] == "Bearer k"
        chunk = {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
        final = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
        return httpx.Response(200, content=_sse(chunk, final, usage))

    return httpx.MockTransport(handler), calls


async def test_retries_429_and_5xx_with_backoff() -> None:
    transport, calls = _fake([429, 503, 200])
    engine = UpstreamEngine("http://fake/v1", "m", api_key="k", backoff=0.01, transport=transport)
    await engine.load()
    try:
        from genai_service.engines.base import ChatMessage, Prompt

        prompt = Prompt(text="", token_ids=[], messages=(ChatMessage("user", "hello"),))
        result = await collect(engine.stream(prompt, SamplingParams(max_tokens=4)))
    finally:
        await engine.close()
    assert calls == [429, 503, 200]
    assert (result.text, result.finish_reason, result.prompt_tokens) == ("hi", "stop", 3)


async def test_gives_up_after_max_retries() -> None:
    transport, calls = _fake([502])
    engine = UpstreamEngine(
        "http://fake/v1", "m", api_key="k", backoff=0.01, max_retries=2, transport=transport
    )
    await engine.load()
    try:
        from genai_service.engines.base import Prompt

        with pytest.raises(EngineHTTPError) as caught:
            await collect(engine.stream(Prompt("hi", []), SamplingParams(max_tokens=4)))
    finally:
        await engine.close()
    assert calls == [502, 502, 502]
    assert caught.value.status_code == 502
