"""llama.cpp engine (llama-cpp-python): GGUF models on the CPU.

Generation runs in `llama_batch.BatchScheduler`: one thread owns the llama context and decodes
every active request in one batch per step (continuous batching). The event loop only awaits
results: tokens travel back through an asyncio queue, and a `Cancellation` flag makes the
scheduler drop a request (and free its KV cells) before the next step.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from genai_service.engines.base import (
    Cancellation,
    ChatMessage,
    GenerationChunk,
    ModelInfo,
    Prompt,
    SamplingParams,
)
from genai_service.engines.worker import Emit, stream_from_worker

# ChatML, for GGUF files that carry no chat template of their own.
_FALLBACK_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class LlamaCppEngine:
    engine_name = "llama.cpp"

    def __init__(
        self,
        model_path: Path,
        *,
        model_id: str | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = 512,
        n_gpu_layers: int = 0,
        n_parallel: int = 4,
        prefill_chunk: int = 256,
        prefix_cache: bool = True,
        batch_invariant: bool = False,
    ) -> None:
        self.model_path = Path(model_path)
        self.n_ctx = n_ctx  # per request (per slot); the KV cache holds n_parallel times it
        self.n_threads = n_threads or os.cpu_count() or 1
        self.n_batch = n_batch
        self.n_gpu_layers = n_gpu_layers  # > 0 or -1 (all) needs a CUDA/Metal build of llama.cpp
        self.n_parallel = n_parallel
        self.prefill_chunk = prefill_chunk
        self.prefix_cache = prefix_cache
        self.batch_invariant = batch_invariant
        self.info = ModelInfo(
            id=model_id or self.model_path.stem,
            engine=self.engine_name,
            context_length=n_ctx,
            created=int(self.model_path.stat().st_mtime) if self.model_path.exists() else 0,
            path=str(self.model_path),
        )
        self._model: Any = None
        self._formatter: Any = None
        self._scheduler: Any = None

    @property
    def active(self) -> int:
        """Requests running in (or handed to) the batch scheduler right now."""
        return self._scheduler.active if self._scheduler is not None else 0

    @property
    def pending(self) -> int:
        """Requests handed to the scheduler that wait for a free slot."""
        return self._scheduler.pending if self._scheduler is not None else 0

    # --- lifecycle -----------------------------------------------------------------------
    async def load(self) -> None:
        await asyncio.to_thread(self._load_sync)

    def _model_params(self, llama_cpp: Any) -> Any:
        params = llama_cpp.llama_model_default_params()
        if self.n_gpu_layers:
            # -1: every layer (llama.cpp reads any count above the model's as "all").
            params.n_gpu_layers = 0x7FFFFFFF if self.n_gpu_layers < 0 else self.n_gpu_layers
        return params

    def _load_sync(self) -> None:
        import llama_cpp
        from llama_cpp._internals import LlamaModel
        from llama_cpp._logger import set_verbose
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        from genai_service.engines.llama_batch import BatchScheduler

        if not self.model_path.is_file():
            raise FileNotFoundError(f"model file not found: {self.model_path}")
        set_verbose(False)  # llama.cpp logs every context and graph detail otherwise
        llama_cpp.llama_backend_init()
        model = LlamaModel(
            path_model=str(self.model_path),
            params=self._model_params(llama_cpp),
            verbose=False,
        )
        template = model.metadata().get("tokenizer.chat_template") or _FALLBACK_TEMPLATE
        eos, bos = model.token_eos(), model.token_bos()
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(eos) if eos != -1 else "",
            bos_token=model.token_get_text(bos) if bos != -1 else "",
            add_generation_prompt=True,
        )
        self._scheduler = BatchScheduler(
            model,
            model_id=self.info.id,
            n_ctx_per_slot=self.n_ctx,
            n_parallel=self.n_parallel,
            n_threads=self.n_threads,
            n_batch=self.n_batch,
            prefill_chunk=self.prefill_chunk,
            prefix_cache=self.prefix_cache,
            batch_invariant=self.batch_invariant,
        )
        self._model = model

    async def close(self) -> None:
        scheduler, self._scheduler = self._scheduler, None
        model, self._model = self._model, None
        if scheduler is not None:
            await asyncio.to_thread(scheduler.close)
        if model is not None:
            model.close()

    # --- prompts ---------------------------------------------------------------------------
    def _tokenize(self, text: str, add_bos: bool) -> list[int]:
        if self._model is None:
            raise RuntimeError("engine is not loaded")
        return list(self._model.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    async def tokenize(self, text: str) -> list[int]:
        # The vocabulary is read-only, so tokenizing need not wait for the scheduler.
        return await asyncio.to_thread(self._tokenize, text, True)

    async def text_prompt(self, text: str) -> Prompt:
        return Prompt(text=text, token_ids=await self.tokenize(text))

    async def chat_prompt(self, messages: Sequence[ChatMessage]) -> Prompt:
        rendered = self._formatter(
            messages=[{"role": m.role, "content": m.content} for m in messages]
        ).prompt
        # The template writes the BOS token itself where the model wants one.
        ids = await asyncio.to_thread(self._tokenize, rendered, False)
        return Prompt(text=rendered, token_ids=ids)

    # --- generation ------------------------------------------------------------------------
    async def stream(
        self, prompt: Prompt, params: SamplingParams, cancel: Cancellation | None = None
    ) -> AsyncIterator[GenerationChunk]:
        scheduler = self._scheduler
        if scheduler is None:
            raise RuntimeError("engine is not loaded")
        cancel = cancel or Cancellation()

        def start(emit: Emit) -> None:
            # The scheduler drops a cancelled request before its next step.
            scheduler.submit(prompt.token_ids, params, cancel, emit)

        async for chunk in stream_from_worker(start, cancel):
            yield chunk
