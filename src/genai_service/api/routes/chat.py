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
from genai_service.api.sse import MARKER, StreamFormat, Template, sse_response, usage_of
from genai_service.engines.base import GenerationChunk
from genai_service.serving.generation import Generation, complete_all

router = APIRouter(tags=["openai"])


@router.post("/chat/completions", response_model=ChatCompletion)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, state: State
) -> JSONResponse | EventSourceResponse:
    engine = resolve_engine(state, body.model)
    callable_tools = body.callable_tools()
    prompt = await engine.chat_prompt(tools.messages(body))
    generations = await state.generations.start_choices(request, engine, prompt, body)
    cid, created, model = new_id("chatcmpl"), now(), engine.info.id

    if body.stream:

        def chunk(
            index: int,
            delta: ChatDelta,
            finish: str | None = None,
            piece: GenerationChunk | None = None,
        ) -> ChatCompletionChunk:
            logprobs = chat_logprobs(piece.logprobs) if piece is not None else None
            choice = ChatChunkChoice(
                index=index,
                delta=delta,
                finish_reason=finish,  # type: ignore[arg-type]
                logprobs=logprobs,
            )
            return ChatCompletionChunk(id=cid, created=created, model=model, choices=[choice])

        forced = body.forces_tool_call()
        calls = [tools.ToolCallStream(callable_tools, forced) for _ in generations]
        # A text delta without logprobs (nearly every event): pre-encoded, per choice.
        content = [
            Template(chunk(index, ChatDelta(content=MARKER))) for index in range(len(generations))
        ]

        def delta(piece: GenerationChunk, index: int) -> ChatCompletionChunk | bytes | None:
            stream = calls[index]
            text = stream.feed(piece.text) if callable_tools else piece.text
            if not text and not (piece.logprobs and stream.mode == "content"):
                return None  # held back: it may be a tool call
            if piece.logprobs is None:
                return content[index](text)
            return chunk(index, ChatDelta(content=text), piece=piece)

        def final(last: GenerationChunk, _: Generation, index: int) -> list[ChatCompletionChunk]:
            events = []
            finish: str | None = last.finish_reason
            if callable_tools:
                call, held_back = calls[index].finish()
                if call is not None:
                    # As the OpenAI SDK assembles them: id, type and name first, then arguments.
                    head = ToolCallDelta(
                        index=0,
                        id=call.id,
                        type="function",
                        function=FunctionCallDelta(name=call.function.name, arguments=""),
                    )
                    rest = ToolCallDelta(
                        index=0, function=FunctionCallDelta(arguments=call.function.arguments)
                    )
                    events += [
                        chunk(index, ChatDelta(tool_calls=[head])),
                        chunk(index, ChatDelta(tool_calls=[rest])),
                    ]
                    finish = "tool_calls"
                elif held_back:
                    events.append(chunk(index, ChatDelta(content=held_back)))
            events.append(chunk(index, ChatDelta(), finish))
            return events

        def end(lasts: list[GenerationChunk]) -> list[ChatCompletionChunk]:
            if not body.include_usage():
                return []
            usage = usage_of(*lasts)
            return [
                ChatCompletionChunk(id=cid, created=created, model=model, choices=[], usage=usage)
            ]

        plain = not callable_tools and body.requested_logprobs() is None and len(generations) == 1
        fmt = StreamFormat(
            first=lambda index: [chunk(index, ChatDelta(role="assistant", content=""))],
            delta=delta,
            final=final,
            end=end,
            direct=content[0] if plain else None,
        )
        return sse_response(generations, fmt)

    results = await complete_all(generations)
    choices = []
    for index, result in enumerate(results):
        call = tools.parse_call(result.text, callable_tools) if callable_tools else None
        message = (
            ChatMessageOut(content=None, tool_calls=[call])
            if call is not None
            else ChatMessageOut(content=result.text)
        )
        choices.append(
            ChatChoice(
                index=index,
                message=message,
                finish_reason="tool_calls" if call is not None else result.finish_reason,
                logprobs=chat_logprobs(result.logprobs),
            )
        )
    response = ChatCompletion(
        id=cid, created=created, model=model, choices=choices, usage=usage_of(*results)
    )
    return JSONResponse(response.model_dump())
