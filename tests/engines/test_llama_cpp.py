"""The llama.cpp engine on the real SmolLM2 GGUF, without HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from genai_service.engines.base import Cancellation, ChatMessage, Prompt, SamplingParams, collect
from genai_service.engines.llama_cpp import LlamaCppEngine
from genai_service.model_store import embedded_model_path


@pytest.fixture(scope="module")
async def engine() -> AsyncIterator[LlamaCppEngine]:
    engine = LlamaCppEngine(embedded_model_path(), n_ctx=1024)
    await engine.load()
    yield engine
    await engine.close()


async def test_info_and_template(engine: LlamaCppEngine) -> None:
    assert engine.info.id == "SmolLM2-135M-Instruct.Q4_1"
    assert engine.info.context_length == 1024
    prompt = await engine.chat_prompt([ChatMessage("user", "hi")])
    # The chat template stored in the GGUF (ChatML with SmolLM's default system turn).
    assert prompt.text.startswith("<|im_start|>system\n")
    assert prompt.text.endswith("<|im_start|>assistant\n")
    assert len(prompt.token_ids) == len(await engine.tokenize(prompt.text))


async def test_greedy_is_deterministic_and_counts_tokens(engine: LlamaCppEngine) -> None:
    prompt = await engine.text_prompt("The three primary colours are")
    params = SamplingParams(max_tokens=12, temperature=0.0)
    first, second = (
        await collect(engine.stream(prompt, params)),
        await collect(engine.stream(prompt, params)),
    )
    assert first.text == second.text and first.text
    assert first.finish_reason == "length" and first.completion_tokens == 12
    assert first.prompt_tokens == len(prompt.token_ids)


async def test_cancellation_stops_between_tokens(engine: LlamaCppEngine) -> None:
    prompt = await engine.text_prompt("Once upon a time")
    cancel = Cancellation()
    pieces = 0
    async for _ in engine.stream(prompt, SamplingParams(max_tokens=500, temperature=0.0), cancel):
        pieces += 1
        if pieces == 3:
            cancel.cancel()
            break
    assert pieces == 3
    # The worker is free again: a new generation runs to completion.
    done = await collect(engine.stream(prompt, SamplingParams(max_tokens=2, temperature=0.0)))
    assert done.completion_tokens == 2
    assert engine.active == 0


async def test_empty_prompt_finishes_at_once(engine: LlamaCppEngine) -> None:
    # Nothing to decode: the engine process sends the final chunk now, not with the next request.
    empty = Prompt(text="", token_ids=[])
    result = await asyncio.wait_for(collect(engine.stream(empty, SamplingParams(max_tokens=3))), 10)
    assert result.finish_reason == "length" and result.completion_tokens == 0
