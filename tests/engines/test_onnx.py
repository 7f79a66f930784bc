"""ONNX Runtime engine: MiniLM embeddings against sentence-transformers, and causal-LM
generation with a KV cache against transformers' own greedy decoding of the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from genai_service.engines.base import ChatMessage, SamplingParams, collect
from genai_service.engines.onnx import OnnxCausalLMEngine, OnnxEmbeddingEngine
from genai_service.model_store import embedded_checkpoint_dir, onnx_cache_dir
from tests.conftest import ExportRun, FirstStart, make_settings, run_server

TEXTS = [
    "A man is eating food.",
    "The new movie is awesome.",
    "How do I reset my password?",
    "Kubernetes restarts the pod when the liveness probe fails.",
    "Quantization shrinks model weights to eight bits.",
    "Paris is the capital of France.",
]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(embedded_checkpoint_dir("minilm")), device="cpu")
    return np.asarray(model.encode(TEXTS, normalize_embeddings=False))


@pytest.mark.parametrize(("precision", "floor"), [("fp32", 0.9999), ("int8", 0.98)])
async def test_embeddings_match_sentence_transformers(
    minilm_cache: Path, reference: np.ndarray, precision: str, floor: float
) -> None:
    engine = OnnxEmbeddingEngine(
        onnx_cache_dir(minilm_cache, "all-MiniLM-L6-v2"),
        model_id="all-MiniLM-L6-v2",
        precision=precision,  # type: ignore[arg-type]
    )
    await engine.load()
    try:
        assert engine.info.path and engine.info.path.endswith(
            "model.int8.onnx" if precision == "int8" else "model.onnx"
        )
        vectors, tokens = await engine.embed(TEXTS)
    finally:
        await engine.close()
    got = np.asarray(vectors)
    assert got.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    cosine = (got * reference).sum(axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() >= floor, cosine
    assert tokens > len(TEXTS) * 3  # real token counts, with [CLS] and [SEP]


def test_minilm_cache_is_reused(minilm_cache: Path) -> None:
    from genai_service.engines import resolve_onnx_model

    folder = onnx_cache_dir(minilm_cache, "all-MiniLM-L6-v2")
    before = (folder / "model.int8.onnx").stat().st_mtime_ns
    with capture_logs() as logs:
        again, model_id = resolve_onnx_model("minilm", make_settings(model_cache_dir=minilm_cache))
    assert (again, model_id) == (folder, "all-MiniLM-L6-v2")
    assert (folder / "model.int8.onnx").stat().st_mtime_ns == before
    assert logs == []  # no export, nothing to announce


def test_the_first_start_export_says_what_it_does(minilm_first_start: FirstStart) -> None:
    events = [entry["event"] for entry in minilm_first_start.logs]
    assert events == ["onnx_export_started", "onnx_export_done"]
    started, done = minilm_first_start.logs
    assert started["model"] == "all-MiniLM-L6-v2" and started["precision"] == "int8"
    assert "first start only" in started["note"]
    assert done["seconds"] > 0


async def test_causal_lm_kv_cache_matches_transformers(
    tiny_llama: Path, tiny_llama_onnx: ExportRun
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert tiny_llama_onnx.exit_code == 0, tiny_llama_onnx.output
    engine = OnnxCausalLMEngine(tiny_llama_onnx.out, precision="fp32", n_ctx=512)
    await engine.load()
    try:
        prompt = await engine.chat_prompt([ChatMessage("user", "Hello world")])
        result = await collect(engine.stream(prompt, SamplingParams(max_tokens=24, temperature=0)))
    finally:
        await engine.close()

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    expected_ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello world"}], add_generation_prompt=True
    )
    assert prompt.token_ids == list(expected_ids)
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([expected_ids]), max_new_tokens=24, do_sample=False, eos_token_id=2
        )
    new = out[0, len(expected_ids) :].tolist()
    assert result.completion_tokens == len([t for t in new if t != 2])
    assert result.text == tokenizer.decode([t for t in new if t != 2], skip_special_tokens=True)
    assert result.prompt_tokens == len(expected_ids)


async def test_causal_lm_int8_stop_sequence_and_seed(tiny_llama_onnx: ExportRun) -> None:
    engine = OnnxCausalLMEngine(tiny_llama_onnx.out, precision="int8", n_ctx=512)
    await engine.load()
    try:
        assert engine.info.path and engine.info.path.endswith("model.int8.onnx")
        prompt = await engine.text_prompt("The quick brown fox")
        params = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=7)
        first = await collect(engine.stream(prompt, params))
        second = await collect(engine.stream(prompt, params))
        assert first == second  # same seed, same text
        assert first.completion_tokens > 0
        assert first.text, "random weights still produce some text"
        stop = first.text[len(first.text) // 2 :][:2]
        stopped = await collect(
            engine.stream(
                prompt,
                SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=7, stop=(stop,)),
            )
        )
        assert stopped.text == first.text[: first.text.index(stop)]
        assert stopped.finish_reason == "stop"
    finally:
        await engine.close()


def test_onnx_engine_serves_chat_over_http(tiny_llama_onnx: ExportRun) -> None:
    with run_server(
        model=str(tiny_llama_onnx.out), engine="onnx", served_model_name="tiny", n_ctx=512
    ) as server:
        client = server.openai()
        assert [m.id for m in client.models.list().data] == ["tiny"]
        stream = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "Hello"}],
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens >= 1
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reply = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "Hello"}],
            max_tokens=12,
            temperature=0,
        )
        assert reply.choices[0].message.content == text
