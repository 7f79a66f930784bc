"""transformers engine on the CPU with a tiny Llama the tests build (real architecture, random
weights). The same engine runs with device_map="cuda" where a GPU is visible."""

from __future__ import annotations

from pathlib import Path

import torch

from genai_service.engines.base import Cancellation, ChatMessage, SamplingParams, collect
from genai_service.engines.hf_transformers import TransformersEngine, pick_device
from tests.conftest import run_server


def test_auto_device_is_cuda_only_with_a_gpu() -> None:
    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == "cpu"


async def test_greedy_generation_matches_generate(tiny_llama: Path) -> None:
    from transformers import AutoModelForCausalLM

    engine = TransformersEngine(tiny_llama, model_id="tiny", device="cpu", n_ctx=512)
    await engine.load()
    try:
        assert engine.info.context_length == 512
        prompt = await engine.chat_prompt([ChatMessage("user", "Hello world")])
        chunks = [
            c async for c in engine.stream(prompt, SamplingParams(max_tokens=20, temperature=0))
        ]
    finally:
        await engine.close()
    last = chunks[-1]
    assert last.finish_reason in ("stop", "length")
    text = "".join(c.text for c in chunks)

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt.token_ids]), max_new_tokens=20, do_sample=False, eos_token_id=2
        )
    new = [t for t in out[0, len(prompt.token_ids) :].tolist() if t != 2]
    assert last.completion_tokens == len(new)
    assert last.prompt_tokens == len(prompt.token_ids)
    assert text == engine._tokenizer.decode(new, skip_special_tokens=True)


async def test_seed_stop_and_cancel(tiny_llama: Path) -> None:
    engine = TransformersEngine(tiny_llama, device="cpu", n_ctx=512)
    await engine.load()
    try:
        prompt = await engine.text_prompt("The quick brown fox")
        params = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=11)
        first = await collect(engine.stream(prompt, params))
        assert first == await collect(engine.stream(prompt, params))
        assert first.text
        stop = first.text[len(first.text) // 2 :][:2]
        stopped = await collect(
            engine.stream(
                prompt,
                SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=11, stop=(stop,)),
            )
        )
        assert stopped.text == first.text[: first.text.index(stop)]
        assert stopped.finish_reason == "stop"

        cancel = Cancellation()
        seen = 0
        async for chunk in engine.stream(
            prompt, SamplingParams(max_tokens=200, temperature=1.0), cancel
        ):
            seen += 1
            if chunk.text:
                cancel.cancel()
                break
        assert seen >= 1
    finally:
        await engine.close()


def test_transformers_engine_over_http(tiny_llama: Path) -> None:
    with run_server(
        model=str(tiny_llama), engine="transformers", served_model_name="tiny-llama", n_ctx=512
    ) as server:
        client = server.openai()
        assert [m.id for m in client.models.list().data] == ["tiny-llama"]
        stream = client.chat.completions.create(
            model="tiny-llama",
            messages=[{"role": "user", "content": "Hello"}],
            max_tokens=10,
            temperature=0,
            stream=True,
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        reply = client.chat.completions.create(
            model="tiny-llama",
            messages=[{"role": "user", "content": "Hello"}],
            max_tokens=10,
            temperature=0,
        )
        assert reply.choices[0].message.content == streamed
        assert reply.usage is not None and reply.usage.completion_tokens >= 1
        completion = client.completions.create(
            model="tiny-llama", prompt="The quick", max_tokens=5, temperature=0
        )
        assert completion.usage is not None and completion.usage.prompt_tokens >= 2
