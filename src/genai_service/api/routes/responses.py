"""POST /v1/responses: the Responses API for text and message input, streaming or not.

Responses are not stored (`store` is reported as false, `previous_response_id` is refused with
a 400 that points at /v1/conversations); tools are served by /v1/chat/completions.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from genai_service.api.deps import State, resolve_engine
from genai_service.api.errors import APIError
from genai_service.api.schemas import (
    OutputMessage,
    OutputText,
    ResponseEvent,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    new_id,
    now,
)
from genai_service.api.sse import StreamFormat, sse_response
from genai_service.engines.base import ChatMessage, Completion, GenerationChunk

router = APIRouter(tags=["openai"])


def _unsupported(param: str, message: str) -> APIError:
    return APIError(400, message, param=param, code="unsupported_parameter")


def _messages(body: ResponsesRequest) -> list[ChatMessage]:
    turns = [ChatMessage("system", body.instructions)] if body.instructions else []
    if isinstance(body.input, str):
        return [*turns, ChatMessage("user", body.input)]
    for item in body.input:
        role = "system" if item.role == "developer" else item.role
        turns.append(ChatMessage(role, item.text()))
    return turns


@router.post("/responses", response_model=ResponseObject)
async def create_response(
    body: ResponsesRequest, request: Request, state: State
) -> JSONResponse | EventSourceResponse:
    if body.previous_response_id:
        raise _unsupported(
            "previous_response_id",
            "Responses are not stored here, so previous_response_id cannot be followed: send "
            "the history as input, or use /v1/conversations for stored history.",
        )
    if body.tools:
        raise _unsupported(
            "tools", "Tools are not supported on /v1/responses; use /v1/chat/completions."
        )
    engine = resolve_engine(state, body.model)
    prompt = await engine.chat_prompt(_messages(body))
    generation = await state.generations.start(request, engine, prompt, body)
    rid, mid, created = new_id("resp"), new_id("msg"), now()
    fmt_type = body.text.format.model_dump(by_alias=True, exclude_none=True) if body.text else None

    def response(
        status: str, text: str | None = None, result: Completion | GenerationChunk | None = None
    ) -> ResponseObject:
        done = result is not None
        message_status = "in_progress" if not done else status
        output = (
            [OutputMessage(id=mid, status=message_status, content=[OutputText(text=text)])]  # type: ignore[arg-type]
            if text is not None
            else []
        )
        usage = (
            ResponseUsage(
                input_tokens=result.prompt_tokens,
                output_tokens=result.completion_tokens,
                total_tokens=result.prompt_tokens + result.completion_tokens,
            )
            if result is not None
            else None
        )
        return ResponseObject(
            id=rid,
            created_at=created,
            status=status,  # type: ignore[arg-type]
            model=engine.info.id,
            output=output,
            usage=usage,
            incomplete_details=(
                {"reason": "max_output_tokens"} if status == "incomplete" else None
            ),
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            temperature=generation.params.temperature,
            top_p=generation.params.top_p,
            text={"format": fmt_type or {"type": "text"}},
            metadata=body.metadata or {},
        )

    def status_of(finish_reason: str | None) -> str:
        return "incomplete" if finish_reason == "length" else "completed"

    if body.stream:
        sequence = 0
        parts: list[str] = []

        def event(kind: str, **fields: Any) -> ResponseEvent:
            nonlocal sequence
            sequence += 1
            return ResponseEvent(type=kind, sequence_number=sequence - 1, **fields)

        where = {"item_id": mid, "output_index": 0, "content_index": 0}
        empty = OutputText(text="").model_dump()

        def first(_: int) -> list[ResponseEvent]:
            start = response("in_progress").model_dump()
            item = OutputMessage(id=mid, status="in_progress", content=[]).model_dump()
            return [
                event("response.created", response=start),
                event("response.in_progress", response=start),
                event("response.output_item.added", output_index=0, item=item),
                event("response.content_part.added", part=empty, **where),
            ]

        def delta(piece: GenerationChunk, _: int) -> ResponseEvent:
            parts.append(piece.text)
            return event("response.output_text.delta", delta=piece.text, logprobs=[], **where)

        def final(last: GenerationChunk, *_: Any) -> list[ResponseEvent]:
            text = "".join(parts)
            status = status_of(last.finish_reason)
            done = response(status, text, last)
            item = done.output[0].model_dump()
            return [
                event("response.output_text.done", text=text, logprobs=[], **where),
                event(
                    "response.content_part.done", part=OutputText(text=text).model_dump(), **where
                ),
                event("response.output_item.done", output_index=0, item=item),
                event(f"response.{status}", response=done.model_dump()),
            ]

        return sse_response(generation, StreamFormat(first=first, delta=delta, final=final))

    result = await generation.complete()
    done = response(status_of(result.finish_reason), result.text, result)
    return JSONResponse(done.model_dump())
