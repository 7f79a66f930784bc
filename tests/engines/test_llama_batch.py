"""Continuous batching on the real SmolLM2 GGUF: batched output equals solo output."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from genai_service import metrics
from genai_service.engines.base import (
    Cancellation,
    ChatMessage,
    Completion,
    Prompt,
    SamplingParams,
    collect,
)
from genai_service.engines.llama_cpp import LlamaCppEngine
from genai_service.model_store import embedded_model_path
from tests.conftest import MODEL_ID, RunningServer

# Different lengths; the last one is long enough to be prefilled in several chunks.
PROMPTS = [
    ("The capital of France is", 12),
    ("def fibonacci(n):", 16),
    ("List three colours:", 8),
    ("Once upon a time, " + "in a land far away, there lived a wise old owl who " * 6, 12),
]
# One thread: OpenMP barriers crawl when other work shares the cores.
OPTIONS = {"n_ctx": 512, "n_threads": 1, "batch_invariant": True}


@pytest.fixture(scope="module")
async def engine() -> AsyncIterator[LlamaCppEngine]:
    engine = LlamaCppEngine(embedded_model_path(), n_ctx=512, n_parallel=4, batch_invariant=True)
    await engine.load()
    yield engine
    await engine.close()


def greedy(max_tokens: int, stop: tuple[str, ...] = ()) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=stop)


async def wait_idle(engine: LlamaCppEngine) -> None:
    for _ in range(500):
        if engine.active == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"engine still has {engine.active} active sequences")


async def test_batched_equals_alone_with_late_joiner(engine: LlamaCppEngine) -> None:
    prompts = [await engine.text_prompt(text) for text, _ in PROMPTS]
    assert len(prompts[-1].token_ids) > 62  # several prefill chunks
    alone = [
        await collect(engine.stream(p, greedy(n)))
        for p, (_, n) in zip(prompts, PROMPTS, strict=True)
    ]

    async def late(prompt: Prompt, n: int) -> Completion:
        await asyncio.sleep(0.3)  # joins while the others are decoding
        return await collect(engine.stream(prompt, greedy(n)))

    jobs = [
        collect(engine.stream(p, greedy(n)))
        for p, (_, n) in zip(prompts[:-1], PROMPTS, strict=False)
    ]
    batched = await asyncio.gather(*jobs, late(prompts[-1], PROMPTS[-1][1]))
    for solo, together in zip(alone, batched, strict=True):
        assert together.text == solo.text and solo.text
        assert together.completion_tokens == solo.completion_tokens
        assert together.prompt_tokens == solo.prompt_tokens
        assert together.finish_reason == solo.finish_reason
    await wait_idle(engine)


async def test_shared_system_prompt_is_reused(engine: LlamaCppEngine) -> None:
    system = ChatMessage("system", "You are a terse assistant. " * 8)
    first = await engine.chat_prompt([system, ChatMessage("user", "Name a fruit.")])
    second = await engine.chat_prompt([system, ChatMessage("user", "Name a colour.")])
    reused = metrics.PREFIX_REUSED_TOKENS.labels(engine.info.id)
    await collect(engine.stream(first, greedy(4)))
    before = reused._value.get()
    warm = await collect(engine.stream(second, greedy(4)))
    assert reused._value.get() - before >= 60  # the system turn came from the cache
    # The same prompt on a cold cache gives the same text.
    cold = LlamaCppEngine(embedded_model_path(), n_parallel=1, prefix_cache=False, **OPTIONS)  # type: ignore[arg-type]
    await cold.load()
    try:
        assert (await collect(cold.stream(second, greedy(4)))).text == warm.text
    finally:
        await cold.close()


async def test_a_repeated_prompt_and_the_next_turn_reuse_the_slot_cache(
    engine: LlamaCppEngine,
) -> None:
    # Each slot keeps its last prompt and reply (as llama-server's slot cache): asking the
    # same thing again decodes one prompt token, and a chat's next turn only its new tokens.
    reused = metrics.PREFIX_REUSED_TOKENS.labels(engine.info.id)
    turn = [ChatMessage("user", "Name three rivers in Europe.")]
    first_prompt = await engine.chat_prompt(turn)
    first = await collect(engine.stream(first_prompt, greedy(12)))
    before = reused._value.get()
    again = await collect(engine.stream(first_prompt, greedy(12)))
    assert reused._value.get() - before == len(first_prompt.token_ids) - 1
    assert again.text == first.text

    history = [*turn, ChatMessage("assistant", first.text), ChatMessage("user", "And lakes?")]
    second_prompt = await engine.chat_prompt(history)
    before = reused._value.get()
    second = await collect(engine.stream(second_prompt, greedy(6)))
    # The previous prompt and most of the reply came from the cache (the template's own
    # tokens around the reply may differ from the generated ones).
    assert reused._value.get() - before > len(first_prompt.token_ids) + 6
    cold = LlamaCppEngine(embedded_model_path(), n_parallel=1, prefix_cache=False, **OPTIONS)  # type: ignore[arg-type]
    await cold.load()
    try:
        assert (await collect(cold.stream(second_prompt, greedy(6)))).text == second.text
    finally:
        await cold.close()
    await wait_idle(engine)


async def test_a_prompt_shares_the_prefix_of_a_running_request(engine: LlamaCppEngine) -> None:
    # A system prompt no earlier test used: no cached slot holds it, the running request does.
    system = ChatMessage("system", "You answer in one short sentence, politely. " * 6)
    long = await engine.chat_prompt([system, ChatMessage("user", "Tell me about the sea.")])
    short = await engine.chat_prompt([system, ChatMessage("user", "Name a bird.")])
    cold = LlamaCppEngine(embedded_model_path(), n_parallel=1, prefix_cache=False, **OPTIONS)  # type: ignore[arg-type]
    await cold.load()
    try:
        alone = await collect(cold.stream(short, greedy(8)))
    finally:
        await cold.close()
    reused = metrics.PREFIX_REUSED_TOKENS.labels(engine.info.id)

    async def joins_late() -> Completion:
        await asyncio.sleep(0.3)  # the long one is decoding by now
        return await collect(engine.stream(short, greedy(8)))

    before = reused._value.get()
    _, joined = await asyncio.gather(collect(engine.stream(long, greedy(60))), joins_late())
    assert reused._value.get() - before >= 60  # the system turn, from the running request
    assert joined.text == alone.text
    await wait_idle(engine)


async def test_the_unified_slot_cache_gives_a_fresh_prompts_greedy_text() -> None:
    # The default layout: cached slots share one buffer. Whatever the cache held, a reused
    # prefix must give the text a cold engine gives (the new cells follow the kept ones).
    system = ChatMessage("system", "You are a terse assistant. " * 6)
    turns = [
        [system, ChatMessage("user", "Name a fruit.")],
        [system, ChatMessage("user", "Name a colour.")],
        [system, ChatMessage("user", "Name a fruit.")],
    ]
    warm = LlamaCppEngine(embedded_model_path(), n_ctx=512, n_parallel=2, n_threads=1)
    cold = LlamaCppEngine(
        embedded_model_path(), n_ctx=512, n_parallel=2, n_threads=1, prefix_cache=False
    )
    await warm.load()
    await cold.load()
    try:
        reused = metrics.PREFIX_REUSED_TOKENS.labels(warm.info.id)
        before = reused._value.get()
        first = await collect(warm.stream(await warm.chat_prompt(turns[0]), greedy(10)))
        turns.append(
            [*turns[0], ChatMessage("assistant", first.text), ChatMessage("user", "Another?")]
        )
        # Each prompt after the first finds some of itself cached, in a slot whose cache also
        # holds other tokens (another question, the reply) that the reuse cuts.
        for messages in [*turns, *turns]:
            hot = await collect(warm.stream(await warm.chat_prompt(messages), greedy(10)))
            fresh = await collect(cold.stream(await cold.chat_prompt(messages), greedy(10)))
            assert hot.text == fresh.text and hot.text
        assert reused._value.get() - before > 300
    finally:
        await warm.close()
        await cold.close()


async def test_an_idle_slot_waits_in_ram_and_comes_back() -> None:
    # One slot: another prompt takes it, and the first one's KV goes to RAM instead of being
    # lost (as llama-server's --cache-ram); a prompt that starts the same way gets it back.
    system = ChatMessage("system", "You are a helpful librarian. " * 6)
    turns = [
        [system, ChatMessage("user", "Recommend a book.")],
        [ChatMessage("user", "What is two plus two?")],
        [system, ChatMessage("user", "Recommend a film.")],
    ]
    texts, saved = [], []
    for ram in (1024, 0):
        engine = LlamaCppEngine(
            embedded_model_path(), n_ctx=512, n_parallel=1, n_threads=1, prompt_cache_mb=ram
        )
        await engine.load()
        try:
            reused = metrics.PREFIX_REUSED_TOKENS.labels(engine.info.id)
            prompts = [await engine.chat_prompt(messages) for messages in turns]
            for prompt in prompts[:2]:
                await collect(engine.stream(prompt, greedy(6)))
            before = reused._value.get()
            texts.append((await collect(engine.stream(prompts[2], greedy(10)))).text)
            saved.append(reused._value.get() - before)
        finally:
            await engine.close()
    first, last = prompts[0].token_ids, prompts[2].token_ids
    shared = next(i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b)
    # Without RAM, only what the second prompt shares (the template's first tokens) is left.
    assert shared > 40 and saved[0] == shared and saved[1] < 10
    assert texts[0] == texts[1] and texts[0]  # the text a fresh prompt gives


async def test_cancel_mid_batch_frees_the_slot(engine: LlamaCppEngine) -> None:
    prompts = [await engine.text_prompt(text) for text, _ in PROMPTS[:3]]
    solo = await collect(engine.stream(prompts[1], greedy(10)))
    cancel = Cancellation()

    async def cancelled() -> int:
        pieces = 0
        async for _ in engine.stream(prompts[0], greedy(400), cancel):
            pieces += 1
            if pieces == 3:
                cancel.cancel()
                break
        return pieces

    pieces, other = await asyncio.gather(
        cancelled(), collect(engine.stream(prompts[1], greedy(10)))
    )
    assert pieces == 3
    assert other.text == solo.text  # its neighbour leaving did not disturb it
    await wait_idle(engine)
    # Every slot is usable again: a full batch of n_parallel requests completes.
    done = await asyncio.gather(
        *(collect(engine.stream(prompts[2], greedy(3))) for _ in range(engine.n_parallel))
    )
    assert all(d.completion_tokens == 3 for d in done)


async def test_stop_sequences_within_a_batch(engine: LlamaCppEngine) -> None:
    prompt = await engine.text_prompt("def fibonacci(n):")
    full = await collect(engine.stream(prompt, greedy(16)))
    assert "return" in full.text
    stopped, unstopped = await asyncio.gather(
        collect(engine.stream(prompt, greedy(16, stop=("return",)))),
        collect(engine.stream(prompt, greedy(16))),
    )
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.index("return")]
    assert unstopped.text == full.text


def test_metrics_endpoint(server: RunningServer) -> None:
    client = server.openai()
    client.completions.create(model=MODEL_ID, prompt="Hello", max_tokens=3, temperature=0)
    with server.http() as http:
        response = http.get("/metrics")
    assert response.status_code == 200
    body = response.text
    for name in (
        "genai_queue_depth",
        "genai_active_sequences",
        "genai_generated_tokens_total",
        "genai_time_to_first_token_seconds_bucket",
        "genai_inter_token_latency_seconds_bucket",
        f'genai_requests_total{{model="{MODEL_ID}",outcome="length"}}',
    ):
        assert name in body, name


async def test_unified_kv_admits_what_fits_and_the_rest_waits() -> None:
    # The default layout: one unified KV buffer. Room for two requests' prompt + reply, so
    # the third waits for cells to free instead of running out of KV mid-reply.
    engine = LlamaCppEngine(
        embedded_model_path(), n_ctx=256, n_parallel=4, n_threads=1, kv_cache_tokens=256
    )
    await engine.load()
    try:
        prompts = [await engine.text_prompt(text) for text, _ in PROMPTS[:3]]
        results = await asyncio.gather(*(collect(engine.stream(p, greedy(120))) for p in prompts))
        for result in results:
            assert result.text and result.finish_reason in ("stop", "length")
        await wait_idle(engine)
        assert engine.pending == 0
        # The slots kept those prompts and replies; a request that needs nearly the whole
        # buffer takes their cells back (least recently used first) instead of waiting.
        long = await engine.text_prompt(PROMPTS[-1][0])
        done = await collect(engine.stream(long, greedy(256 - len(long.token_ids) - 8)))
        assert done.completion_tokens > 0 and done.finish_reason in ("stop", "length")
    finally:
        await engine.close()


async def test_stream_interval_sends_a_streams_text_in_fewer_chunks(
    engine: LlamaCppEngine,
) -> None:
    # STREAM_INTERVAL_MS: the first token at once, then one chunk per interval (here longer
    # than the reply, so the rest comes as one chunk before the final one); the same text.
    coalesced = LlamaCppEngine(embedded_model_path(), stream_interval_ms=60_000, **OPTIONS)  # type: ignore[arg-type]
    await coalesced.load()
    try:
        prompt = await coalesced.text_prompt("List three colours:")
        chunks = [chunk async for chunk in coalesced.stream(prompt, greedy(24))]
    finally:
        await coalesced.close()
    expected = await collect(
        engine.stream(await engine.text_prompt("List three colours:"), greedy(24))
    )
    final = chunks[-1]
    assert final.completion_tokens == expected.completion_tokens > 3
    assert "".join(chunk.text for chunk in chunks) == expected.text
    assert len([chunk for chunk in chunks[:-1] if chunk.text]) == 2
