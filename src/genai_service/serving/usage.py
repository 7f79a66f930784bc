"""Usage recording: one ledger record per generation, whatever its outcome.

`GenerationService` creates a `UsageRecorder` at admission, notes each generated piece
and calls `finish()` once; the record goes to the ledger writer's queue (no database call
on the request path), and any failure here is logged, never raised into a generation.
"""

from __future__ import annotations

import time
from typing import Literal

import structlog
from fastapi import Request

from genai_service.engines.base import (
    Completion,
    EmbeddingEngine,
    Engine,
    GenerationChunk,
    Prompt,
)

log = structlog.get_logger(__name__)

Status = Literal["ok", "error", "cancelled"]


def _endpoint(request: Request) -> str:
    # The route's shape (`/v1/conversations/{conversation_id}/messages`), not one path.
    path = request.url.path
    for name, value in request.path_params.items():
        if isinstance(value, str) and value:
            path = path.replace(value, "{" + name + "}")
    return path[:64]


def record_embeddings(request: Request, engine: EmbeddingEngine) -> UsageRecorder:
    """A recorder for one /v1/embeddings call: set `prompt_tokens`, then `finish()`. Its record
    has the input tokens and no completion tokens."""
    return UsageRecorder(request, engine, Prompt(text="", token_ids=[]))


class UsageRecorder:
    def __init__(
        self, request: Request | None, engine: Engine | EmbeddingEngine, prompt: Prompt
    ) -> None:
        self.request = request
        self.engine = engine
        self.prompt_tokens = len(prompt.token_ids)
        self.started = time.perf_counter()
        self.first_piece_at: float | None = None
        self.pieces = 0
        self.done = False

    def piece(self, chunk: GenerationChunk) -> None:
        if chunk.text:
            self.pieces += 1
            if self.first_piece_at is None:
                self.first_piece_at = time.perf_counter()

    def finish(self, status: Status, result: GenerationChunk | Completion | None = None) -> None:
        if self.done:
            return
        self.done = True
        try:
            self._submit(status, result)
        except Exception:
            log.exception("usage_record_failed")

    def _submit(self, status: Status, result: GenerationChunk | Completion | None) -> None:
        request = self.request
        storage = getattr(request.app.state, "storage", None) if request is not None else None
        if storage is None or request is None:
            return
        from genai_service.storage.ledger import UsageRecord

        ended = time.perf_counter()
        final = result is not None and (
            isinstance(result, Completion) or result.finish_reason is not None
        )
        state = request.state
        storage.ledger.submit(
            UsageRecord(
                request_id=str(getattr(state, "request_id", "") or ""),
                endpoint=_endpoint(request),
                model=self.engine.info.id,
                engine=self.engine.info.engine,
                prompt_tokens=result.prompt_tokens if final and result else self.prompt_tokens,
                # Unfinished generations count the pieces sent (one per token, near enough).
                completion_tokens=result.completion_tokens if final and result else self.pieces,
                ttft_ms=(
                    round((self.first_piece_at - self.started) * 1000, 3)
                    if self.first_piece_at is not None
                    else None
                ),
                latency_ms=round((ended - self.started) * 1000, 3),
                status=status,
                api_key_id=getattr(state, "api_key_id", None),
            )
        )
