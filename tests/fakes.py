"""A small fake engine for the fast rule tests: words as tokens, no model, instant."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from genai_service.engines.base import (
    Cancellation,
    ChatMessage,
    GenerationChunk,
    ModelInfo,
    Prompt,
    SamplingParams,
)


class FakeEngine:
    """Replies "w0 w1 w2 ..." one word per token; `fail_after` raises mid-stream."""

    engine_name = "fake"

    def __init__(
        self,
        context_length: int = 64,
        *,
        delay: float = 0.0,
        fail_after: int | None = None,
        error: BaseException | None = None,
    ) -> None:
        self.info = ModelInfo(id="fake", engine=self.engine_name, context_length=context_length)
        self.delay = delay
        self.fail_after = fail_after
        self.error = error or RuntimeError("engine fault")
        self.active = 0
        self.cancelled = 0
        self.seen: list[SamplingParams] = []

    async def load(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def tokenize(self, text: str) -> list[int]:
        return [len(word) for word in text.split()]

    async def text_prompt(self, text: str) -> Prompt:
        return Prompt(text=text, token_ids=await self.tokenize(text))

    async def chat_prompt(self, messages: Sequence[ChatMessage]) -> Prompt:
        return await self.text_prompt(" ".join(m.content for m in messages))

    async def stream(
        self, prompt: Prompt, params: SamplingParams, cancel: Cancellation | None = None
    ) -> AsyncIterator[GenerationChunk]:
        self.seen.append(params)
        self.active += 1
        try:
            for i in range(params.max_tokens):
                if cancel is not None and cancel.cancelled:
                    self.cancelled += 1
                    return
                if self.fail_after is not None and i == self.fail_after:
                    raise self.error
                await asyncio.sleep(self.delay)
                yield GenerationChunk(text=f"w{i} ")
            yield GenerationChunk(
                text="",
                finish_reason="length",
                prompt_tokens=len(prompt.token_ids),
                completion_tokens=params.max_tokens,
            )
        finally:
            self.active -= 1
