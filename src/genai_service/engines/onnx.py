"""ONNX Runtime engines: sentence embeddings and causal-LM generation with a KV cache.

Run-time needs are onnxruntime, tokenizers and numpy only (no torch), so the CPU image stays
small. Models come from `genai-service models export-onnx` (see `onnx_export`): a folder with
`model.onnx` / `model.int8.onnx` and the tokenizer and config files beside them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from genai_service.engines.base import (
    Cancellation,
    ChatMessage,
    GenerationChunk,
    ModelInfo,
    Prompt,
    SamplingParams,
    check_token_ids,
)
from genai_service.engines.onnx_export import FP32_FILE, INT8_FILE
from genai_service.engines.text import IncrementalDetokenizer, ReplyAssembler
from genai_service.engines.threads import default_threads
from genai_service.engines.worker import Emit, ExecutorEngine
from genai_service.settings import ModelSpec, Settings

Precision = Literal["int8", "fp32"]


def model_file(model_dir: Path, precision: Precision) -> Path:
    """INT8 when asked for and present, else FP32."""
    int8, fp32 = model_dir / INT8_FILE, model_dir / FP32_FILE
    if precision == "int8" and int8.is_file():
        return int8
    if fp32.is_file():
        return fp32
    if int8.is_file():
        return int8
    raise FileNotFoundError(
        f"no {FP32_FILE} or {INT8_FILE} in {model_dir}: "
        "create one with `genai-service models export-onnx SRC OUT --quantize int8`"
    )


def _session(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


class OnnxEmbeddingEngine:
    """Sentence embeddings as sentence-transformers computes them: mean pooling over real
    tokens, then L2 normalisation when the model's `modules.json` has a Normalize step."""

    engine_name = "onnx"

    def __init__(
        self,
        model_dir: Path,
        *,
        model_id: str | None = None,
        precision: Precision = "int8",
        threads: int | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.precision = precision
        self.threads = threads
        # Dynamic INT8 quantizes activations with one scale per tensor over the whole batch,
        # so padding and neighbours would shift a text's vector (cosine ~0.99 to itself alone):
        # INT8 runs one text per call, which keeps every vector the same in any request.
        self.batch_size = batch_size or (1 if precision == "int8" else 32)
        st_config = _read_json(self.model_dir / "sentence_bert_config.json")
        model_config = _read_json(self.model_dir / "config.json")
        self.max_seq_length = int(
            st_config.get("max_seq_length") or model_config.get("max_position_embeddings") or 512
        )
        modules_file = self.model_dir / "modules.json"
        modules = json.loads(modules_file.read_text()) if modules_file.is_file() else []
        # sentence-transformers models say whether they normalise; bare encoders: normalise.
        self.normalize = not modules or any(
            m.get("type", "").endswith("Normalize") for m in modules
        )
        pooling = _read_json(self.model_dir / "1_Pooling" / "config.json")
        self.pooling = "cls" if pooling.get("pooling_mode_cls_token") else "mean"
        self.dimensions = int(model_config.get("hidden_size", 0))
        self.info = ModelInfo(
            id=model_id or self.model_dir.name,
            engine=self.engine_name,
            context_length=self.max_seq_length,
            path=str(self.model_dir),
        )
        self._session: Any = None
        self._tokenizer: Any = None
        self._inputs: set[str] = set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx-embed")

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load_sync)

    def _load_sync(self) -> None:
        from tokenizers import Tokenizer

        path = model_file(self.model_dir, self.precision)
        tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        # Same truncation as sentence-transformers (max_seq_length), padding to the batch.
        tokenizer.enable_truncation(max_length=self.max_seq_length)
        tokenizer.enable_padding()
        if path.name != INT8_FILE and self.batch_size == 1:
            self.batch_size = 32  # INT8 was asked for but only FP32 exists: batching is exact
        self._session = _session(path, self.threads)
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._tokenizer = tokenizer
        self.info = ModelInfo(
            id=self.info.id,
            engine=self.engine_name,
            context_length=self.max_seq_length,
            created=int(path.stat().st_mtime),
            path=str(path),
        )

    async def close(self) -> None:
        self._session = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.embed_sync, list(texts))

    def embed_sync(self, texts: list[str]) -> tuple[list[list[float]], int]:
        vectors, tokens = [], 0
        for start in range(0, len(texts), self.batch_size):
            batch, count = self._embed_batch(texts[start : start + self.batch_size])
            vectors.extend(batch.tolist())
            tokens += count
        return vectors, tokens

    def _embed_batch(self, texts: list[str]) -> tuple[Any, int]:
        import numpy as np

        if self._session is None:
            raise RuntimeError("engine is not loaded")
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        hidden = self._session.run(None, feed)[0]  # last_hidden_state: [batch, seq, dim]
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        if self.normalize:
            pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return pooled.astype(np.float32), int(mask.sum())


class OnnxCausalLMEngine(ExecutorEngine):
    """Causal-LM generation on ONNX Runtime with the KV cache fed back between steps."""

    engine_name = "onnx"

    def __init__(
        self,
        model_dir: Path,
        *,
        model_id: str | None = None,
        precision: Precision = "int8",
        n_ctx: int = 4096,
        threads: int | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.precision = precision
        self.threads = threads
        config = _read_json(self.model_dir / "config.json")
        self.n_ctx = min(n_ctx, int(config.get("max_position_embeddings") or n_ctx))
        self.info = ModelInfo(
            id=model_id or self.model_dir.name,
            engine=self.engine_name,
            context_length=self.n_ctx,
            path=str(self.model_dir),
        )
        self.active = 0
        self._session: Any = None
        self._tokenizer: Any = None
        self._template: Any = None
        self._special: dict[str, str] = {}
        self._eos: set[int] = set()
        self._past: list[tuple[str, list[Any]]] = []  # (input name, static shape) per cache
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx-lm")

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load_sync)

    def _load_sync(self) -> None:
        from tokenizers import Tokenizer

        path = model_file(self.model_dir, self.precision)
        self._tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self._template, self._special = _chat_template(self.model_dir)
        self._eos = _eos_ids(self.model_dir, self._tokenizer)
        session = _session(path, self.threads)
        self._past = [
            (i.name, list(i.shape))
            for i in session.get_inputs()
            if i.name.startswith("past_key_values")
        ]
        self._inputs = {i.name for i in session.get_inputs()}
        self._session = session
        self.info = ModelInfo(
            id=self.info.id,
            engine=self.engine_name,
            context_length=self.n_ctx,
            created=int(path.stat().st_mtime),
            path=str(path),
        )

    async def close(self) -> None:
        self._session = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def tokenize(self, text: str) -> list[int]:
        return await asyncio.to_thread(self._encode, text)

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=True).ids)

    async def detokenize(self, token_ids: Sequence[int]) -> str:
        check_token_ids(token_ids, self._tokenizer.get_vocab_size())
        return str(self._tokenizer.decode(list(token_ids), skip_special_tokens=False))

    async def text_prompt(self, text: str) -> Prompt:
        return Prompt(text=text, token_ids=await self.tokenize(text))

    async def chat_prompt(self, messages: Sequence[ChatMessage]) -> Prompt:
        rendered = self._template.render(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=True,
            **self._special,
        )
        ids = await asyncio.to_thread(
            lambda: list(self._tokenizer.encode(rendered, add_special_tokens=False).ids)
        )
        return Prompt(text=rendered, token_ids=ids, messages=tuple(messages))

    def _decode(
        self,
        prompt: Prompt,
        params: SamplingParams,
        cancel: Cancellation,
        emit: Emit,
    ) -> GenerationChunk | None:
        import numpy as np

        if self._session is None:
            raise RuntimeError("engine is not loaded")
        rng = np.random.default_rng(params.seed)
        ids = list(prompt.token_ids)
        n_prompt = len(ids)
        budget = min(params.max_tokens, self.n_ctx - n_prompt)
        past = {
            name: np.zeros(
                [1 if not isinstance(d, int) else d for d in shape[:2]]
                + [0]
                + [d if isinstance(d, int) else 1 for d in shape[3:]],
                dtype=np.float32,
            )
            for name, shape in self._past
        }
        reply = ReplyAssembler(
            params.stop,
            IncrementalDetokenizer(
                lambda toks: self._tokenizer.decode(toks, skip_special_tokens=True)
            ),
            self._eos,
            emit,
        )
        step_ids = ids
        while reply.generated < budget:
            if cancel.cancelled:
                return None
            total = n_prompt + reply.generated
            feed = {"input_ids": np.array([step_ids], dtype=np.int64), **past}
            if "attention_mask" in self._inputs:
                feed["attention_mask"] = np.ones((1, total), dtype=np.int64)
            if "position_ids" in self._inputs:
                start = total - len(step_ids)
                feed["position_ids"] = np.arange(start, total, dtype=np.int64)[None]
            outputs = self._session.run(None, feed)
            logits = outputs[0][0, -1]
            # Outputs after logits are present.N.key/value, in the order of the inputs.
            past = {name: outputs[1 + i] for i, (name, _) in enumerate(self._past)}
            token = _sample(logits, params, rng)
            if reply.push(token):
                break
            step_ids = [token]
        return reply.final(n_prompt)


def _sample(logits: Any, params: SamplingParams, rng: Any) -> int:
    """Greedy at temperature 0; otherwise temperature, then nucleus (top_p) sampling."""
    import numpy as np

    if params.temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / params.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs)
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, params.top_p)) + 1]
        mask = np.zeros_like(probs)
        mask[keep] = probs[keep]
        probs = mask / mask.sum()
    return int(rng.choice(len(probs), p=probs))


def _chat_template(model_dir: Path) -> tuple[Any, dict[str, str]]:
    """The model's own chat template (chat_template.jinja or tokenizer_config), else ChatML."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from genai_service.engines.llama_cpp import FALLBACK_TEMPLATE

    config = _read_json(model_dir / "tokenizer_config.json")
    source = model_dir / "chat_template.jinja"
    template = source.read_text() if source.is_file() else config.get("chat_template")
    if isinstance(template, list):  # several named templates: take the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    special = {}
    for key in ("bos_token", "eos_token"):
        value = config.get(key)
        special[key] = value.get("content", "") if isinstance(value, dict) else (value or "")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template or FALLBACK_TEMPLATE), special


def _eos_ids(model_dir: Path, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        value = _read_json(model_dir / name).get("eos_token_id")
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(int(v) for v in value)
    eos = _read_json(model_dir / "tokenizer_config.json").get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    if isinstance(eos, str) and (token := tokenizer.token_to_id(eos)) is not None:
        ids.add(token)
    return ids


def from_spec(spec: ModelSpec, settings: Settings) -> OnnxCausalLMEngine | OnnxEmbeddingEngine:
    """The registry's factory (engines/registry.py); exports a checkpoint at first use."""
    from genai_service.engines.registry import resolve_onnx_model

    folder, model_id = resolve_onnx_model(spec.model, settings)
    if spec.kind == "embedding":
        return OnnxEmbeddingEngine(
            folder,
            model_id=spec.served_model_name or model_id,
            precision=settings.onnx_precision,
            threads=settings.n_threads,
        )
    return OnnxCausalLMEngine(
        folder,
        model_id=spec.served_model_name or model_id,
        precision=settings.onnx_precision,
        n_ctx=settings.n_ctx,
        threads=settings.n_threads,
    )
