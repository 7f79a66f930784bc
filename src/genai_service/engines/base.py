"""The engine protocol: the small surface every inference backend implements.

The API layer speaks only these types, so engines (llama.cpp, ONNX Runtime, transformers,
an upstream server) are interchangeable behind the same routes.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length"]


class EngineError(Exception):
    """Base class for errors an engine reports to the API layer."""


class EngineHTTPError(EngineError):
    """An engine backed by a remote server got an HTTP error the client should see."""

    def __init__(self, status_code: int, message: str, code: str | None = None) -> None:
        self.status_code = status_code
        self.message = message
        self.code = code
        super().__init__(message)


class EngineUnavailable(EngineError):
    """The engine cannot generate right now (its process crashed and is restarting); retry."""


class ContextLengthExceeded(EngineError):
    def __init__(self, prompt_tokens: int, max_tokens: int, context_length: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_length = context_length
        super().__init__(
            f"This model's maximum context length is {context_length} tokens. "
            f"Your prompt has {prompt_tokens} tokens; at least one more is needed "
            "for the reply. Shorten the prompt or the message history."
        )


def check_token_ids(token_ids: Sequence[int], vocab_size: int) -> None:
    """For `detokenize`: ValueError naming the first id outside the vocabulary."""
    for token in token_ids:
        if not 0 <= token < vocab_size:
            raise ValueError(f"token id {token} is outside the vocabulary (0 to {vocab_size - 1})")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    engine: str
    context_length: int
    owned_by: str = "genai-service"
    created: int = 0
    path: str | None = None


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # The reply must be JSON matching this schema (serialized), enforced while decoding.
    json_schema: str | None = None
    # Log-probabilities of each generated token and of this many top alternatives (None: off).
    logprobs: int | None = None
    # Never end on the end-of-generation token: exactly max_tokens (benchmarks; vLLM's field).
    ignore_eos: bool = False


@dataclass(slots=True)
class Prompt:
    """A prompt already tokenized, so its length is known before any work starts.

    `messages` keeps the chat turns for engines that forward them unrendered (an upstream
    OpenAI-compatible server renders its own template); local engines ignore it.
    """

    text: str
    token_ids: list[int]
    messages: tuple[ChatMessage, ...] | None = None


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token: its bytes, log-probability, and the top alternatives."""

    token: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()


@dataclass(slots=True)
class GenerationChunk:
    """One streamed piece of a generation; the last one carries `finish_reason`."""

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # One entry per generated token covered by this chunk (when logprobs were asked for).
    logprobs: list[TokenLogprob] | None = None


@dataclass(slots=True)
class Cancellation:
    """Set by the API layer when the client went away; engines check it between tokens."""

    _event: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@runtime_checkable
class Engine(Protocol):
    """A text-generation engine.

    Optional attribute: `features`, a set of what it honours beyond plain sampling
    ("json_schema", "logprobs", "ignore_eos": the `SamplingParams` fields of those names); the serving layer
    answers 400 for a request that needs a feature its engine lacks, so no field is silently
    ignored.
    """

    info: ModelInfo
    active: int  # generations in progress (observability, tests, metrics)

    async def load(self) -> None:
        """Load weights; called once by the app's lifespan."""

    async def close(self) -> None:
        """Free resources."""

    async def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` as the model sees it (special tokens parsed)."""

    async def chat_prompt(self, messages: Sequence[ChatMessage]) -> Prompt:
        """Render messages with the model's own chat template and tokenize the result."""

    async def text_prompt(self, text: str) -> Prompt:
        """Tokenize a raw completion prompt."""

    # Optional: `async def detokenize(self, token_ids: Sequence[int]) -> str` (POST /detokenize),
    # raising ValueError (via `check_token_ids`) for ids outside the vocabulary.

    def stream(
        self, prompt: Prompt, params: SamplingParams, cancel: Cancellation | None = None
    ) -> AsyncIterator[GenerationChunk]:
        """Generate, yielding text pieces; the final chunk has finish_reason and usage."""
        ...


@dataclass(slots=True)
class DirectStream:
    """A streaming client's socket, handed to an engine that writes the text events itself.

    Engines with the "direct_stream" feature take it (the llama.cpp engine process): the API
    process sends the response head and the opening events, hands the socket over, and stays
    off it until the engine reports the end. Each token then costs one write in the engine
    process and nothing in the API process, as llama-server's do.

    An event is `head + JSON string of the text + tail`, in HTTP/1.1 chunked framing when
    `chunked`. At the end the engine fills in the rest (see `end`).
    """

    fd: int  # the client socket, in this process
    head: bytes
    tail: bytes
    chunked: bool
    # Set by the engine once submitted: stop the generation and report (the drain's timeout).
    interrupt: Callable[[], None] | None = None
    ended: bool = False
    unsent: bytes = b""  # written by the engine only in part (a slow client): the API sends it
    text: str = ""  # the whole reply, as written
    first_at: float | None = None  # time.monotonic() of the first token's write
    gaps: list[float] = field(default_factory=list)  # seconds between the tokens' writes
    # Called by `end` (on the event loop): what the consumer left to do once it reported, if
    # the consumer stopped first (a client that hung up).
    on_end: Callable[[], None] | None = None

    @property
    def report_due(self) -> bool:
        """The engine took the socket (it set `interrupt`) and has not reported yet."""
        return self.interrupt is not None and not self.ended

    def end(self, unsent: bytes, text: str, first_at: float | None, gaps: list[float]) -> None:
        self.ended = True
        self.unsent, self.text, self.first_at, self.gaps = unsent, text, first_at, gaps
        if self.on_end is not None:
            self.on_end()


@runtime_checkable
class EmbeddingEngine(Protocol):
    """An engine that turns texts into vectors (`/v1/embeddings`)."""

    info: ModelInfo

    async def load(self) -> None: ...

    async def close(self) -> None: ...

    async def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        """One vector per text, and the number of tokens read (for usage)."""
        ...


@dataclass(slots=True)
class Completion:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None


async def collect(chunks: AsyncIterator[GenerationChunk]) -> Completion:
    """Run a stream to its end and join it into one completion."""
    parts: list[str] = []
    logprobs: list[TokenLogprob] | None = None
    last = GenerationChunk(text="", finish_reason="stop")
    async for chunk in chunks:
        parts.append(chunk.text)
        if chunk.logprobs is not None:
            logprobs = (logprobs or []) + chunk.logprobs
        last = chunk
    return Completion(
        text="".join(parts),
        finish_reason=last.finish_reason or "stop",
        prompt_tokens=last.prompt_tokens,
        completion_tokens=last.completion_tokens,
        logprobs=logprobs,
    )
