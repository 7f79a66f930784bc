"""The GenerationService's rules on a fake engine (fast tier): limits, admission, cancellation,
accounting and the on_finish hook. The same rules run end to end on the real model in tests/api."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from genai_service import metrics
from genai_service.api.errors import APIError
from genai_service.api.schemas import ChatCompletionRequest, GenerateTextRequest
from genai_service.engines.base import Completion, EngineUnavailable
from genai_service.serving.generation import GenerationService
from genai_service.serving.limiter import Busy, GenerationLimiter
from genai_service.settings import Settings
from tests.fakes import FakeEngine


def service(slots: int = 1, queue: int = 1, timeout: float = 5.0) -> GenerationService:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, default_max_tokens=8, default_temperature=0.3, default_top_p=0.9
    )
    return GenerationService(settings, GenerationLimiter(slots, queue, timeout))


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest(
        model="fake", messages=[{"role": "user", "content": "hi"}], **fields
    )


def requests_counted(outcome: str) -> float:
    return float(metrics.REQUESTS.labels("fake", outcome)._value.get())


async def test_sampling_params_resolved_once_with_defaults() -> None:
    engine = FakeEngine(context_length=20)
    prompt = await engine.text_prompt("one two three four")
    params = service().sampling(engine, prompt, chat(stop=["x"], seed=3))
    assert (params.max_tokens, params.temperature, params.top_p) == (8, 0.3, 0.9)
    assert params.stop == ("x",) and params.seed == 3
    # max_completion_tokens wins over max_tokens; the default is clipped to the room left.
    assert service().sampling(engine, prompt, chat(max_completion_tokens=5)).max_tokens == 5
    small = FakeEngine(context_length=10)
    assert service().sampling(small, prompt, chat()).max_tokens == 6
    # /generate/text shares the same fields and rules.
    text = GenerateTextRequest(prompt="hi", temperature=0.0, top_p=0.5)
    assert service().sampling(engine, prompt, text).top_p == 0.5


async def test_context_limits_are_400() -> None:
    engine = FakeEngine(context_length=4)
    full = await engine.text_prompt("a b c d")
    with pytest.raises(APIError) as no_room:
        service().sampling(engine, full, chat())
    assert no_room.value.status_code == 400 and no_room.value.code == "context_length_exceeded"
    short = await engine.text_prompt("a b")
    with pytest.raises(APIError) as too_many:
        service().sampling(engine, short, chat(max_tokens=3))
    assert too_many.value.param == "max_tokens" and "at most 2" in too_many.value.message


async def test_burst_admission_holds_the_queue_bound() -> None:
    limiter = GenerationLimiter(2, 2, 5)
    calls = [asyncio.ensure_future(limiter.acquire()) for _ in range(48)]
    await asyncio.sleep(0.05)
    refused = [c for c in calls if c.done() and isinstance(c.exception(), Busy)]
    assert len(refused) == 44  # two run, two wait, the rest are turned away at once
    assert (limiter.active, limiter.waiting) == (2, 2)
    for lease in [c.result() for c in calls if c.done() and not c.exception()]:
        lease.release()
    queued = [c for c in calls if not c.done()]
    for lease in await asyncio.gather(*queued):
        lease.release()
    assert (limiter.active, limiter.waiting) == (0, 0)


async def test_stream_accounting_and_on_finish() -> None:
    svc, engine = service(), FakeEngine()
    prompt = await engine.text_prompt("hello there")
    finished: list[Completion] = []

    async def on_finish(result: Completion) -> str:
        finished.append(result)
        return "stored"

    before = requests_counted("length")
    generation = await svc.start(None, engine, prompt, chat(max_tokens=3), on_finish=on_finish)
    assert svc.limiter.active == 1
    chunks = [c async for c in generation.stream()]
    assert [c.text for c in chunks] == ["w0 ", "w1 ", "w2 ", ""]
    assert chunks[-1].finish_reason == "length"
    assert finished == [Completion("w0 w1 w2 ", "length", 2, 3)] and generation.finished == "stored"
    assert svc.limiter.active == 0
    assert requests_counted("length") == before + 1


async def test_complete_and_cancel_free_the_slot() -> None:
    svc, engine = service(), FakeEngine(delay=0.01)
    prompt = await engine.text_prompt("hi")
    done = await (await svc.start(None, engine, prompt, chat(max_tokens=2))).complete()
    assert done.text == "w0 w1 " and svc.limiter.active == 0

    on_finish_calls: list[Completion] = []

    async def on_finish(result: Completion) -> None:
        on_finish_calls.append(result)

    generation = await svc.start(None, engine, prompt, chat(max_tokens=50), on_finish=on_finish)
    stream = generation.stream()
    assert (await anext(stream)).text == "w0 "
    await stream.aclose()  # the client went away
    assert generation.cancel.cancelled and svc.limiter.active == 0
    assert on_finish_calls == []  # nothing stored for an unfinished reply
    assert engine.active == 0


async def test_engine_errors_become_api_errors() -> None:
    svc = service()
    failing = FakeEngine(fail_after=1)
    prompt = await failing.text_prompt("hi")
    with pytest.raises(APIError) as crashed:
        await (await svc.start(None, failing, prompt, chat(max_tokens=4))).complete()
    assert crashed.value.status_code == 500 and "fault" not in crashed.value.message
    restarting = FakeEngine(fail_after=0, error=EngineUnavailable("engine process died (SIGSEGV)"))
    with pytest.raises(APIError) as unavailable:
        await (await svc.start(None, restarting, prompt, chat(max_tokens=4))).complete()
    assert unavailable.value.status_code == 503
    assert unavailable.value.code == "engine_unavailable"
    assert unavailable.value.headers["Retry-After"] == "1"
    assert svc.limiter.active == 0


async def test_queue_full_is_busy() -> None:
    svc, engine = service(slots=1, queue=0), FakeEngine(delay=0.05)
    prompt = await engine.text_prompt("hi")
    running = await svc.start(None, engine, prompt, chat(max_tokens=2))
    with pytest.raises(APIError) as refused:
        await svc.start(None, engine, prompt, chat(max_tokens=2))
    assert refused.value.status_code == 429 and "Retry-After" in refused.value.headers
    await running.complete()


async def test_fields_an_engine_cannot_honour_are_400() -> None:
    engine = FakeEngine()  # no "json_schema" feature
    prompt = await engine.text_prompt("hi")
    body = chat(response_format={"type": "json_object"})
    with pytest.raises(APIError) as refused:
        service().sampling(engine, prompt, body)
    assert refused.value.status_code == 400 and refused.value.param == "response_format"
    engine.features = frozenset({"json_schema"})  # type: ignore[attr-defined]
    assert service().sampling(engine, prompt, body).json_schema == '{"type":"object"}'


async def test_ignore_eos_needs_the_feature_and_no_grammar() -> None:
    engine = FakeEngine()
    prompt = await engine.text_prompt("hi")
    with pytest.raises(APIError) as refused:
        service().sampling(engine, prompt, chat(ignore_eos=True))
    assert refused.value.status_code == 400 and refused.value.param == "ignore_eos"
    engine.features = frozenset({"json_schema", "ignore_eos"})  # type: ignore[attr-defined]
    assert service().sampling(engine, prompt, chat(ignore_eos=True)).ignore_eos
    assert not service().sampling(engine, prompt, chat()).ignore_eos
    # A grammar ends the reply where its JSON ends: the two cannot go together.
    with pytest.raises(APIError) as both:
        service().sampling(
            engine, prompt, chat(ignore_eos=True, response_format={"type": "json_object"})
        )
    assert both.value.status_code == 400 and both.value.code == "unsupported_parameter"
