"""POST /v1/chat/completions (with tool calling: see api/tools.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from genai_service.api import tools
from genai_service.api.deps import State, resolve_engine
from genai_service.api.schemas import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatMessageOut,
    FunctionCallDelta,
    ToolCallDelta,
    chat_logprobs,
    new_id,
    now,
)
from genai_service.api.sse import StreamFormat, sse_response, usage_of
from genai_service.engines.base import GenerationChunk
from genai_service.serving.generation import Generation

router = APIRouter(tags=["openai"])


@router.post("/chat/completions", response_model=ChatCompletion)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, state: State
) -> JSONResponse | EventSourceResponse:
    engine = resolve_engine(state, body.model)
    callable_tools = body.callable_tools()
    prompt = await engine.chat_prompt(tools.messages(body))
    generation = await state.generations.start(request, engine, prompt, body)
    cid, created, model = new_id("chatcmpl"), now(), engine.info.id

    if body.stream:

        def chunk(
            delta: ChatDelta, finish: str | None = None, piece: GenerationChunk | None = None
        ) -> ChatCompletionChunk:
            logprobs = chat_logprobs(piece.logprobs) if piece is not None else None
            choice = ChatChunkChoice(delta=delta, finish_reason=finish, logprobs=logprobs)  # type: ignore[arg-type]
            return ChatCompletionChunk(id=cid, created=created, model=model, choices=[choice])

        calls = tools.ToolCallStream(callable_tools, body.forces_tool_call())

        def delta(piece: GenerationChunk) -> ChatCompletionChunk | None:
            text = calls.feed(piece.text) if callable_tools else piece.text
            if not text and not (piece.logprobs and calls.mode == "content"):
                return None  # held back: it may be a tool call
            return chunk(ChatDelta(content=text), piece=piece)

        def final(last: GenerationChunk, _: Generation) -> list[ChatCompletionChunk]:
            events = []
            finish: str | None = last.finish_reason
            if callable_tools:
                call, held_back = calls.finish()
                if call is not None:
                    # As the OpenAI SDK assembles them: id, type and name first, then arguments.
                    first = ToolCallDelta(
                        index=0,
                        id=call.id,
                        type="function",
                        function=FunctionCallDelta(name=call.function.name, arguments=""),
                    )
                    rest = ToolCallDelta(
                        index=0, function=FunctionCallDelta(arguments=call.function.arguments)
                    )
                    events += [
                        chunk(ChatDelta(tool_calls=[first])),
                        chunk(ChatDelta(tool_calls=[rest])),
                    ]
                    finish = "tool_calls"
                elif held_back:
                    events.append(chunk(ChatDelta(content=held_back)))
            events.append(chunk(ChatDelta(), finish))
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
            delta=delta,
            final=final,
        )
        return sse_response(generation, fmt)

    result = await generation.complete()
    call = tools.parse_call(result.text, callable_tools) if callable_tools else None
    message = (
        ChatMessageOut(content=None, tool_calls=[call])
        if call is not None
        else ChatMessageOut(content=result.text)
    )
    response = ChatCompletion(
        id=cid,
        created=created,
        model=model,
        choices=[
            ChatChoice(
                message=message,
                finish_reason="tool_calls" if call is not None else result.finish_reason,
                logprobs=chat_logprobs(result.logprobs),
            )
        ],
        usage=usage_of(result),
    )
    return JSONResponse(response.model_dump())
