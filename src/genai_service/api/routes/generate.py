"""POST /generate/text: the simple endpoint (prompt in, text and token counts out).

The prompt is sent as one user turn through the model's chat template, so an instruct
model answers it; `system` adds a system turn.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Request

from genai_service.api.deps import State, resolve_engine
from genai_service.api.errors import APIError
from genai_service.api.schemas import (
    GenerateTextQuery,
    GenerateTextRequest,
    GenerateTextResponse,
)
from genai_service.api.sse import usage_of
from genai_service.engines.base import ChatMessage

router = APIRouter(tags=["generate"])


@router.post("/generate/text", response_model=GenerateTextResponse)
async def generate_text(
    request: Request,
    state: State,
    query: Annotated[GenerateTextQuery, Query()],
    body: Annotated[GenerateTextRequest | None, Body()] = None,
) -> GenerateTextResponse:
    if body is None:
        if query.prompt is None:
            raise APIError(
                400,
                'Send a prompt: JSON body {"prompt": "..."} or the ?prompt= query parameter.',
                param="prompt",
                code="missing_prompt",
            )
        # Every field works in the query form too (max_tokens, temperature, stop, ...).
        body = GenerateTextRequest.model_validate(query.model_dump(exclude_unset=True))
    engine = resolve_engine(state, body.model)
    messages = [ChatMessage("system", body.system)] if body.system else []
    messages.append(ChatMessage("user", body.prompt))
    chat_prompt = await engine.chat_prompt(messages)
    generation = await state.generations.start(request, engine, chat_prompt, body)
    result = await generation.complete()
    return GenerateTextResponse(
        text=result.text,
        model=engine.info.id,
        finish_reason=result.finish_reason,
        usage=usage_of(result),
    )
