"""POST /v1/completions (legacy text completions)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from genai_service.api.deps import State, resolve_engine
from genai_service.api.schemas import (
    Completion,
    CompletionChoice,
    CompletionRequest,
    new_id,
    now,
)
from genai_service.api.serving import (
    StreamFormat,
    admit,
    generate,
    request_sampling,
    sse_response,
    usage_of,
)

router = APIRouter(tags=["openai"])


@router.post("/completions", response_model=Completion)
async def completions(
    body: CompletionRequest, request: Request, state: State
) -> JSONResponse | EventSourceResponse:
    engine = resolve_engine(state, body.model)
    prompt = await engine.text_prompt(body.prompt_text())
    params = request_sampling(state, engine, prompt, body, body.max_tokens)
    lease = await admit(state)
    cid, created, model = new_id("cmpl"), now(), engine.info.id
    prefix = body.prompt_text() if body.echo else ""

    def completion(text: str, finish: str | None = None) -> Completion:
        choice = CompletionChoice(text=text, finish_reason=finish)  # type: ignore[arg-type]
        return Completion(id=cid, created=created, model=model, choices=[choice])

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        fmt = StreamFormat(
            first=(lambda: completion(prefix)) if prefix else None,
            delta=completion,
            final=lambda last: completion("", last.finish_reason),
            usage=(
                (
                    lambda last: Completion(
                        id=cid, created=created, model=model, choices=[], usage=usage_of(last)
                    )
                )
                if include_usage
                else None
            ),
        )
        return sse_response(engine, prompt, params, lease, fmt, request=request)

    result = await generate(request, engine, prompt, params, lease)
    response = Completion(
        id=cid,
        created=created,
        model=model,
        choices=[CompletionChoice(text=prefix + result.text, finish_reason=result.finish_reason)],
        usage=usage_of(result),
    )
    return JSONResponse(response.model_dump())
