"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from genai_service.api.deps import State, resolve_engine
from genai_service.api.schemas import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatMessageOut,
    chat_logprobs,
    new_id,
    now,
)
from genai_service.api.sse import StreamFormat, sse_response, usage_of
from genai_service.engines.base import ChatMessage, GenerationChunk
from genai_service.serving.generation import Generation

router = APIRouter(tags=["openai"])


@router.post("/chat/completions", response_model=ChatCompletion)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, state: State
) -> JSONResponse | EventSourceResponse:
    engine = resolve_engine(state, body.model)
    messages = [ChatMessage(role=m.role, content=m.text()) for m in body.messages]
    prompt = await engine.chat_prompt(messages)
    generation = await state.generations.start(request, engine, prompt, body)
    cid, created, model = new_id("chatcmpl"), now(), engine.info.id

    if body.stream:

        def chunk(
            delta: ChatDelta, finish: str | None = None, piece: GenerationChunk | None = None
        ) -> ChatCompletionChunk:
            logprobs = chat_logprobs(piece.logprobs) if piece is not None else None
            choice = ChatChunkChoice(delta=delta, finish_reason=finish, logprobs=logprobs)  # type: ignore[arg-type]
            return ChatCompletionChunk(id=cid, created=created, model=model, choices=[choice])

        def final(last: GenerationChunk, _: Generation) -> list[ChatCompletionChunk]:
            events = [chunk(ChatDelta(), last.finish_reason)]
            if body.include_usage():
                usage = usage_of(last)
                events.append(
                    ChatCompletionChunk(
                        id=cid, created=created, model=model, choices=[], usage=usage
                    )
                )
            return events

        fmt = StreamFormat(
            first=lambda: chunk(ChatDelta(role="assistant", content="")),
            delta=lambda piece: chunk(ChatDelta(content=piece.text), piece=piece),
            final=final,
        )
        return sse_response(generation, fmt)

    result = await generation.complete()
    response = ChatCompletion(
        id=cid,
        created=created,
        model=model,
        choices=[
            ChatChoice(
                message=ChatMessageOut(content=result.text),
                finish_reason=result.finish_reason,
                logprobs=chat_logprobs(result.logprobs),
            )
        ],
        usage=usage_of(result),
    )
    return JSONResponse(response.model_dump())
