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
from genai_service.serving.generation import complete_all

router = APIRouter(tags=["openai"])


@router.post("/completions", response_model=Completion)
async def completions(
    body: CompletionRequest, request: Request, state: State
) -> JSONResponse | EventSourceResponse:
    engine = resolve_engine(state, body.model)
    prompt = await engine.text_prompt(body.prompt_text())
    generations = await state.generations.start_choices(request, engine, prompt, body)
    cid, created, model = new_id("cmpl"), now(), engine.info.id
    prefix = body.prompt_text() if body.echo else ""

    def completion(
        index: int, text: str, finish: str | None = None, logprobs: CompletionLogprobs | None = None
    ) -> Completion:
        choice = CompletionChoice(index=index, text=text, finish_reason=finish, logprobs=logprobs)  # type: ignore[arg-type]
        return Completion(id=cid, created=created, model=model, choices=[choice])

    if body.stream:
        offsets = [len(prefix)] * len(generations)

        def delta(piece: GenerationChunk, index: int) -> Completion:
            logprobs = completion_logprobs(piece.logprobs, offsets[index])
            offsets[index] += len(piece.text)
            return completion(index, piece.text, logprobs=logprobs)

        def end(lasts: list[GenerationChunk]) -> list[Completion]:
            if not body.include_usage():
                return []
            usage = usage_of(*lasts)
            return [Completion(id=cid, created=created, model=model, choices=[], usage=usage)]

        fmt = StreamFormat(
            first=(lambda index: [completion(index, prefix)]) if prefix else None,
            delta=delta,
            final=lambda last, _, index: [completion(index, "", last.finish_reason)],
            end=end,
        )
        return sse_response(generations, fmt)

    results = await complete_all(generations)
    response = Completion(
        id=cid,
        created=created,
        model=model,
        choices=[
            CompletionChoice(
                index=index,
                text=prefix + result.text,
                finish_reason=result.finish_reason,
                logprobs=completion_logprobs(result.logprobs, len(prefix)),
            )
            for index, result in enumerate(results)
        ],
        usage=usage_of(*results),
    )
    return JSONResponse(response.model_dump())
