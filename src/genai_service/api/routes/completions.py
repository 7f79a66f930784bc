"""POST /v1/completions (legacy text completions)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from genai_service.api.deps import State, resolve_engine
from genai_service.api.schemas import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    completion_logprobs,
    new_id,
    now,
)
from genai_service.api.sse import StreamFormat, sse_response, usage_of
from genai_service.engines.base import GenerationChunk
from genai_service.serving.generation import Generation

router = APIRouter(tags=["openai"])


@router.post("/completions", response_model=Completion)
async def completions(
    body: CompletionRequest, request: Request, state: State
) -> JSONResponse | EventSourceResponse:
    engine = resolve_engine(state, body.model)
    prompt = await engine.text_prompt(body.prompt_text())
    generation = await state.generations.start(request, engine, prompt, body)
    cid, created, model = new_id("cmpl"), now(), engine.info.id
    prefix = body.prompt_text() if body.echo else ""

    def completion(
        text: str, finish: str | None = None, logprobs: CompletionLogprobs | None = None
    ) -> Completion:
        choice = CompletionChoice(text=text, finish_reason=finish, logprobs=logprobs)  # type: ignore[arg-type]
        return Completion(id=cid, created=created, model=model, choices=[choice])

    if body.stream:
        offset = len(prefix)

        def streamed(piece: GenerationChunk) -> CompletionLogprobs | None:
            nonlocal offset
            logprobs = completion_logprobs(piece.logprobs, offset)
            offset += len(piece.text)
            return logprobs

        def final(last: GenerationChunk, _: Generation) -> list[Completion]:
            events = [completion("", last.finish_reason)]
            if body.include_usage():
                usage = usage_of(last)
                events.append(
                    Completion(id=cid, created=created, model=model, choices=[], usage=usage)
                )
            return events

        fmt = StreamFormat(
            first=(lambda: completion(prefix)) if prefix else None,
            delta=lambda piece: completion(piece.text, logprobs=streamed(piece)),
            final=final,
        )
        return sse_response(generation, fmt)

    result = await generation.complete()
    response = Completion(
        id=cid,
        created=created,
        model=model,
        choices=[
            CompletionChoice(
                text=prefix + result.text,
                finish_reason=result.finish_reason,
                logprobs=completion_logprobs(result.logprobs, len(prefix)),
            )
        ],
        usage=usage_of(result),
    )
    return JSONResponse(response.model_dump())
