"""transformers engine: `AutoModelForCausalLM` on a GPU (or the CPU), streamed token by token.

Installed with the `transformers` extra only (torch, transformers, accelerate), so the CPU
image never pulls torch or CUDA. `device="auto"` places the model with `device_map="cuda"`
when a GPU is visible and on the CPU otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from genai_service.engines.base import (
    Cancellation,
    ChatMessage,
    GenerationChunk,
    ModelInfo,
    Prompt,
    SamplingParams,
    check_token_ids,
)
from genai_service.engines.text import IncrementalDetokenizer, ReplyAssembler
from genai_service.engines.worker import Emit, ExecutorEngine
from genai_service.settings import ModelSpec, Settings


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TransformersEngine(ExecutorEngine):
    engine_name = "transformers"

    def __init__(
        self,
        model: str | Path,
        *,
        model_id: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        n_ctx: int = 4096,
        threads: int | None = None,
    ) -> None:
        self.model = str(model)
        self.device = device
        self.dtype = dtype
        self.n_ctx = n_ctx
        self.threads = threads
        self.info = ModelInfo(
            id=model_id or Path(self.model).name,
            engine=self.engine_name,
            context_length=n_ctx,
            path=self.model,
        )
        self.active = 0
        self._model: Any = None
        self._tokenizer: Any = None
        self._eos: set[int] = set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transformers")

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load_sync)

    def _load_sync(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.threads:
            torch.set_num_threads(self.threads)
        device = pick_device(self.device)
        self._tokenizer = AutoTokenizer.from_pretrained(self.model)
        model = AutoModelForCausalLM.from_pretrained(
            self.model, device_map=device, dtype=self.dtype
        )
        model.eval()
        eos = model.generation_config.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self._tokenizer.eos_token_id is not None:
            self._eos.add(self._tokenizer.eos_token_id)
        limit = getattr(model.config, "max_position_embeddings", None) or self.n_ctx
        self.n_ctx = min(self.n_ctx, int(limit))
        self.device = str(model.device)
        self.info = ModelInfo(
            id=self.info.id,
            engine=self.engine_name,
            context_length=self.n_ctx,
            path=self.model,
        )
        self._model = model

    async def close(self) -> None:
        self._model = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def tokenize(self, text: str) -> list[int]:
        return await asyncio.to_thread(lambda: list(self._tokenizer(text)["input_ids"]))

    async def detokenize(self, token_ids: Sequence[int]) -> str:
        check_token_ids(token_ids, len(self._tokenizer))
        return str(self._tokenizer.decode(list(token_ids)))

    async def text_prompt(self, text: str) -> Prompt:
        return Prompt(text=text, token_ids=await self.tokenize(text))

    async def chat_prompt(self, messages: Sequence[ChatMessage]) -> Prompt:
        turns = [{"role": m.role, "content": m.content} for m in messages]
        if self._tokenizer.chat_template:
            rendered = self._tokenizer.apply_chat_template(
                turns, tokenize=False, add_generation_prompt=True
            )
        else:
            rendered = "".join(f"{t['role']}: {t['content']}\n" for t in turns) + "assistant: "
        ids = await asyncio.to_thread(
            lambda: list(self._tokenizer(rendered, add_special_tokens=False)["input_ids"])
        )
        return Prompt(text=rendered, token_ids=ids, messages=tuple(messages))

    def _decode(
        self,
        prompt: Prompt,
        params: SamplingParams,
        cancel: Cancellation,
        emit: Emit,
    ) -> GenerationChunk | None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        if self._model is None:
            raise RuntimeError("engine is not loaded")
        n_prompt = len(prompt.token_ids)
        budget = min(params.max_tokens, self.n_ctx - n_prompt)
        reply = ReplyAssembler(
            params.stop,
            IncrementalDetokenizer(
                lambda ids: self._tokenizer.decode(ids, skip_special_tokens=True)
            ),
            self._eos,
            emit,
        )
        prompt_seen = False

        class Streamer(BaseStreamer):
            def put(self, value: Any) -> None:
                nonlocal prompt_seen
                if not prompt_seen:  # generate() hands over the prompt first
                    prompt_seen = True
                    return
                for token in value.reshape(-1).tolist():
                    if reply.done or reply.push(int(token)):
                        return

            def end(self) -> None:
                pass

        class Stop(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                done = cancel.cancelled or reply.done
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool)

        if params.seed is not None:
            torch.manual_seed(params.seed)
        sample = params.temperature > 0
        if budget > 0:
            input_ids = torch.tensor([prompt.token_ids], device=self._model.device)
            with torch.inference_mode():
                self._model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=budget,
                    do_sample=sample,
                    temperature=params.temperature if sample else None,
                    top_p=params.top_p if sample else None,
                    top_k=None,
                    streamer=Streamer(),
                    stopping_criteria=StoppingCriteriaList([Stop()]),
                    pad_token_id=self._tokenizer.pad_token_id
                    if self._tokenizer.pad_token_id is not None
                    else next(iter(self._eos), 0),
                )
        if cancel.cancelled:
            return None
        return reply.final(n_prompt)


def from_spec(spec: ModelSpec, settings: Settings) -> TransformersEngine:
    """The registry's factory (engines/registry.py)."""
    return TransformersEngine(
        spec.model,
        model_id=spec.served_model_name,
        device=settings.device,
        n_ctx=settings.n_ctx,
        threads=settings.n_threads,
    )
