"""OpenAI protocol models (requests and responses), kept apart from the serving logic.

Unknown request fields are ignored rather than refused, as OpenAI-compatible servers do, so
newer SDKs keep working; fields we accept but cannot honour are validated explicitly.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from genai_service.api.errors import APIError
from genai_service.engines.base import SamplingParams, TokenLogprob
from genai_service.serving.structured import schema_text, unsupported

if TYPE_CHECKING:
    from genai_service.serving.generation import SamplingDefaults


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --- errors --------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# --- shared ---------------------------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class StreamOptions(_Request):
    include_usage: bool = False


Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
MaxTokens = Annotated[int, Field(ge=1)]
MAX_STOP_SEQUENCES = 4
MAX_TOP_LOGPROBS = 20
MAX_CHOICES = 16


class SamplingFields(_Request):
    """The sampling fields every generating request shares.

    `to_sampling_params` turns them into the engine's `SamplingParams` (as vLLM's protocol
    models do); adding a field means adding it here, to `SamplingParams`, and to the engines
    that honour it.
    """

    # GenAI semantic conventions' gen_ai.operation.name, for the generation's trace span.
    operation: ClassVar[str] = "chat"

    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    # Not OpenAI's: vLLM's and llama-server's extension (the SDK's `extra_body`). The reply
    # runs to `max_tokens` whatever the model would say, so benchmarks compare equal work.
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        return value

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def token_limit(self) -> int | None:
        """The reply limit the client asked for, if any."""
        return self.max_tokens

    def to_sampling_params(self, max_tokens: int, defaults: SamplingDefaults) -> SamplingParams:
        """`max_tokens`: the budget the service resolved against the context window."""
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=defaults.temperature if self.temperature is None else self.temperature,
            top_p=defaults.top_p if self.top_p is None else self.top_p,
            stop=self.stop_sequences(),
            seed=self.seed,
            ignore_eos=self.ignore_eos,
        )


class JsonSchemaFormat(_Request):
    name: str = Field("response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    """`{"type": "json_object"}` or `{"type": "json_schema", "json_schema": {"schema": ...}}`."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def schema_text(self) -> str | None:
        """The schema the reply must match, serialized; None for plain text."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return '{"type":"object"}'
        if self.json_schema is None:
            raise unsupported("response_format of type json_schema needs a json_schema object.")
        return schema_text(self.json_schema.schema_ or {"type": "object"})


class _SamplingRequest(SamplingFields):
    model: str
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def requested_logprobs(self) -> int | None:
        """How many top alternatives to return per token; None when logprobs are off."""
        return None

    def to_sampling_params(self, max_tokens: int, defaults: SamplingDefaults) -> SamplingParams:
        params = super().to_sampling_params(max_tokens, defaults)
        schema = self.response_format.schema_text() if self.response_format else None
        return dataclasses.replace(params, json_schema=schema, logprobs=self.requested_logprobs())


# --- chat -----------------------------------------------------------------------------------
class TextContentPart(_Request):
    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessageIn(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant turn that called tools
    tool_call_id: str | None = None  # a tool turn: the call it answers

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionDefinition(_Request):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class ToolDefinition(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


def tool_call_schema(tools: list[ToolDefinition]) -> str:
    """The JSON schema of one call to one of `tools`, checked for what a grammar enforces."""
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool.function.name},
                "arguments": tool.function.parameters,
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    try:
        return schema_text(options[0] if len(options) == 1 else {"anyOf": options})
    except APIError as exc:
        raise APIError(400, f"In tools: {exc.message}", param="tools", code=exc.code) from None


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessageIn] = Field(min_length=1)
    tools: list[ToolDefinition] | None = Field(None, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True
    max_completion_tokens: MaxTokens | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs set to true")
        return self

    def requested_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def callable_tools(self) -> list[ToolDefinition]:
        """The tools the model may call in this request (none with tool_choice "none")."""
        if not self.tools or self.tool_choice == "none":
            return []
        if isinstance(self.tool_choice, NamedToolChoice):
            name = self.tool_choice.function.name
            chosen = [t for t in self.tools if t.function.name == name]
            if not chosen:
                raise APIError(
                    400,
                    f"tool_choice names the function '{name}', which is not in tools.",
                    param="tool_choice",
                    code="invalid_tool_choice",
                )
            return chosen
        return list(self.tools)

    def forces_tool_call(self) -> bool:
        return bool(self.tools) and (
            self.tool_choice == "required" or isinstance(self.tool_choice, NamedToolChoice)
        )

    def to_sampling_params(self, max_tokens: int, defaults: SamplingDefaults) -> SamplingParams:
        params = super().to_sampling_params(max_tokens, defaults)
        if not self.forces_tool_call():
            return params
        # A forced call is structured output: one call to one of the tools, arguments valid.
        return dataclasses.replace(params, json_schema=tool_call_schema(self.callable_tools()))

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None
    refusal: None = None


def _top(token: bytes, logprob: float) -> TopLogprob:
    return TopLogprob(token=token.decode(errors="replace"), logprob=logprob, bytes=list(token))


def chat_logprobs(entries: list[TokenLogprob] | None) -> ChatLogprobs | None:
    if entries is None:
        return None
    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=e.token.decode(errors="replace"),
                logprob=e.logprob,
                bytes=list(e.token),
                top_logprobs=[_top(t, lp) for t, lp in e.top],
            )
            for e in entries
        ]
    )


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: ChatLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


# --- completions ----------------------------------------------------------------------------
class CompletionRequest(_SamplingRequest):
    operation: ClassVar[str] = "text_completion"
    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    def requested_logprobs(self) -> int | None:
        return self.logprobs

    @field_validator("prompt")
    @classmethod
    def _single_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("exactly one prompt is supported per request")
        return value

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


def completion_logprobs(
    entries: list[TokenLogprob] | None, offset: int = 0
) -> CompletionLogprobs | None:
    """`offset`: where the first token starts in the choice's text (after an echoed prompt)."""
    if entries is None:
        return None
    tokens = [e.token.decode(errors="replace") for e in entries]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return CompletionLogprobs(
        tokens=tokens,
        token_logprobs=[e.logprob for e in entries],
        top_logprobs=[{t.decode(errors="replace"): lp for t, lp in e.top} for e in entries],
        text_offset=offsets,
    )


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


# --- models ---------------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- embeddings -----------------------------------------------------------------------------
MAX_EMBEDDING_INPUTS = 2048


class EmbeddingRequest(_Request):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _texts_only(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("input must not be an empty list")
            if len(value) > MAX_EMBEDDING_INPUTS:
                raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs are allowed")
            if not all(isinstance(item, str) for item in value):
                raise ValueError("token-id inputs are not supported; send strings")
        texts = [value] if isinstance(value, str) else value
        if any(not text for text in texts):
            raise ValueError("inputs must be non-empty strings")
        return value

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)  # type: ignore[arg-type]


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


# --- the simple endpoint --------------------------------------------------------------------
class GenerateTextRequest(SamplingFields):
    prompt: str = Field(min_length=1)
    system: str | None = None
    model: str | None = None


class GenerateTextQuery(GenerateTextRequest):
    """The same fields as query parameters (`?prompt=...&max_tokens=5`), for a body-less POST."""

    prompt: str | None = Field(None, min_length=1, description="Prompt, instead of a JSON body")


class GenerateTextResponse(BaseModel):
    text: str
    model: str
    finish_reason: Literal["stop", "length"]
    usage: Usage


# --- the Responses API (text and message input; no tools, no stored state) ----------------
class ResponseInputText(_Request):
    type: Literal["input_text", "output_text", "text"]
    text: str


class ResponseInputMessage(_Request):
    type: Literal["message"] | None = None
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ResponseInputText]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ResponseTextFormat(_Request):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseTextConfig(_Request):
    format: ResponseTextFormat = Field(default_factory=ResponseTextFormat)


class ResponsesRequest(SamplingFields):
    model: str
    input: str | list[ResponseInputMessage]
    instructions: str | None = None
    max_output_tokens: MaxTokens | None = None
    stream: bool = False
    text: ResponseTextConfig | None = None
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None

    def token_limit(self) -> int | None:
        return self.max_output_tokens

    def to_sampling_params(self, max_tokens: int, defaults: SamplingDefaults) -> SamplingParams:
        params = super().to_sampling_params(max_tokens, defaults)
        fmt = self.text.format if self.text else None
        if fmt is None or fmt.type == "text":
            return params
        schema = (
            schema_text(fmt.schema_ or {}) if fmt.type == "json_schema" else '{"type":"object"}'
        )
        return dataclasses.replace(params, json_schema=schema)


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class ResponseUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: dict[str, int] = Field(default_factory=lambda: {"cached_tokens": 0})
    output_tokens_details: dict[str, int] = Field(default_factory=lambda: {"reasoning_tokens": 0})


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    model: str
    output: list[OutputMessage]
    usage: ResponseUsage | None = None
    incomplete_details: dict[str, str] | None = None
    error: dict[str, Any] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    parallel_tool_calls: bool = False
    tool_choice: str = "none"
    tools: list[Any] = Field(default_factory=list)
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    previous_response_id: str | None = None
    store: bool = False
    metadata: dict[str, str] = Field(default_factory=dict)


class ResponseEvent(BaseModel):
    """One streamed Responses event (`type` says which; fields as OpenAI sends them)."""

    model_config = ConfigDict(extra="allow")
    type: str
    sequence_number: int


# --- tokenizer (as vLLM's and llama-server's /tokenize and /detokenize) -------------------
class TokenizeRequest(_Request):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessageIn] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send exactly one of prompt or messages")
        return self


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[int] = Field(max_length=1_000_000)


class DetokenizeResponse(BaseModel):
    prompt: str


# --- health ---------------------------------------------------------------------------------
class Health(BaseModel):
    # failed: the model load failed, and only new settings and a restart can change that.
    status: Literal["ok", "unavailable", "degraded", "failed"]
    reason: str | None = None
    models: dict[str, Any] = Field(default_factory=dict)
    database: dict[str, Any] | None = None
