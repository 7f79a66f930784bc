"""llama.cpp engine (llama-cpp-python): GGUF models on the CPU.

One `Llama` context is not thread-safe, so every call that touches it runs on one dedicated
worker thread; the event loop only awaits results. Tokens travel back to the loop through an
asyncio queue, and a `Cancellation` flag stops a generation between two tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator, Callable, Sequence
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
)
from genai_service.engines.text import StopDetector, Utf8Stream

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
    ) -> None:
        self.model_path = Path(model_path)
        self.n_ctx = n_ctx
        self.n_threads = n_threads or os.cpu_count() or 1
        self.n_batch = n_batch
        self.n_gpu_layers = n_gpu_layers  # > 0 or -1 (all) needs a CUDA/Metal build of llama.cpp
        self.info = ModelInfo(
            id=model_id or self.model_path.stem,
            engine=self.engine_name,
            context_length=n_ctx,
            created=int(self.model_path.stat().st_mtime) if self.model_path.exists() else 0,
            path=str(self.model_path),
        )
        self._llm: Any = None
        self._formatter: Any = None
        self.active = 0  # generations running on the worker thread right now
        # One thread owns the llama context: calls into it are serialised, never concurrent.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama.cpp")

    # --- lifecycle -----------------------------------------------------------------------
    async def load(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load_sync)

    def _load_sync(self) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        if not self.model_path.is_file():
            raise FileNotFoundError(f"model file not found: {self.model_path}")
        llm = Llama(
            model_path=str(self.model_path),
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            n_batch=self.n_batch,
            n_gpu_layers=self.n_gpu_layers,
            verbose=False,
        )
        template = llm.metadata.get("tokenizer.chat_template") or _FALLBACK_TEMPLATE
        model = llm._model
        eos, bos = llm.token_eos(), llm.token_bos()
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(eos) if eos != -1 else "",
            bos_token=model.token_get_text(bos) if bos != -1 else "",
            add_generation_prompt=True,
        )
        self._llm = llm

    async def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, llm.close)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- prompts ---------------------------------------------------------------------------
    def _tokenize(self, text: str, add_bos: bool) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    async def tokenize(self, text: str) -> list[int]:
        # The vocabulary is read-only, so tokenizing need not wait for a running generation.
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
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[GenerationChunk | BaseException] = asyncio.Queue()
        cancel = cancel or Cancellation()

        def emit(item: GenerationChunk | BaseException) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        future = loop.run_in_executor(
            self._executor, self._generate_sync, prompt, params, cancel, emit
        )
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            # The consumer went away (client disconnect) or finished: stop the worker now.
            cancel.cancel()
            future.add_done_callback(_consume_exception)

    def _generate_sync(
        self,
        prompt: Prompt,
        params: SamplingParams,
        cancel: Cancellation,
        emit: Callable[[GenerationChunk | BaseException], None],
    ) -> None:
        self.active += 1
        try:
            final: GenerationChunk | BaseException | None = self._decode(
                prompt, params, cancel, emit
            )
        except BaseException as exc:  # handed to the awaiting coroutine, which re-raises
            final = exc
        finally:
            # Counted down before the last chunk goes out, so a consumer that has it sees 0.
            self.active -= 1
        if final is not None:
            emit(final)

    def _decode(
        self,
        prompt: Prompt,
        params: SamplingParams,
        cancel: Cancellation,
        emit: Callable[[GenerationChunk | BaseException], None],
    ) -> GenerationChunk | None:
        """Sample until a stop condition; emit text pieces, return the final chunk."""
        import llama_cpp

        llm = self._llm
        if llm is None:
            raise RuntimeError("engine is not loaded")
        llm.set_seed(params.seed if params.seed is not None else random.getrandbits(31))
        vocab = llm._model.vocab
        n_prompt = len(prompt.token_ids)
        budget = min(params.max_tokens, self.n_ctx - n_prompt)
        stops = StopDetector(params.stop)
        utf8 = Utf8Stream()
        finish = "length"
        generated = 0
        stopped_by_sequence = False
        if budget > 0:
            # Evaluate the whole prompt afresh: reusing a cached prefix changes the batch
            # shapes, and with them the float rounding, so greedy output would drift
            # between identical requests.
            llm.reset()
            tokens = llm.generate(
                prompt.token_ids,
                temp=params.temperature,
                top_p=params.top_p,
                top_k=40,
                min_p=0.05,
                repeat_penalty=1.0,
            )
            for token in tokens:
                if cancel.cancelled:
                    return None
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                generated += 1
                text, hit = stops.feed(utf8.decode(llm.detokenize([token])))
                if text:
                    emit(GenerationChunk(text=text))
                if hit:
                    finish, stopped_by_sequence = "stop", True
                    break
                if generated >= budget:
                    break
            tokens.close()
        tail = ""
        if not stopped_by_sequence:
            # Text held back as a possible stop-sequence start turned out not to be one.
            tail, hit = stops.feed(utf8.flush())
            if not hit:
                tail += stops.flush()
        return GenerationChunk(
            text=tail,
            finish_reason=finish,  # type: ignore[arg-type]
            prompt_tokens=n_prompt,
            completion_tokens=generated,
        )


def _consume_exception(future: asyncio.Future[Any]) -> None:
    with contextlib.suppress(BaseException):
        future.exception()
