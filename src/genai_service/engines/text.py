"""Text helpers every generating engine shares: stop sequences and incremental UTF-8."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Container, Iterable
from typing import Protocol

from genai_service.engines.base import FinishReason, GenerationChunk


class StopDetector:
    """Finds stop sequences in streamed text without emitting any part of one.

    Text that could be the start of a stop sequence is held back until the next piece
    shows whether it is one; the stop sequence itself is never returned.
    """

    def __init__(self, stops: Iterable[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit, whether a stop sequence was hit)."""
        self._pending += text
        if not self._stops:
            out, self._pending = self._pending, ""
            return out, False
        hits = [i for s in self._stops if (i := self._pending.find(s)) != -1]
        if hits:
            out, self._pending = self._pending[: min(hits)], ""
            return out, True
        hold = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(self._pending)), hold, -1):
                if self._pending.endswith(stop[:k]):
                    hold = k
                    break
        cut = len(self._pending) - hold
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out


class Utf8Stream:
    """Decodes token bytes as they come; a character split across tokens waits for its end."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def decode(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text pieces, for tokenizers without byte access.

    Decoding token by token breaks words and multi-byte characters (byte-level BPE emits
    U+FFFD for half a character; SentencePiece drops the space of a sequence's first word), so
    each new token is decoded together with a short window of the tokens before it (vLLM's
    prefix-offset scheme): the text the window gains over its prefix is the new piece, held back
    while it ends in half a character. Each step decodes a few tokens, not the whole reply.
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # window start: the tokens before the last emitted piece give context
        self._read = 0  # tokens up to here are emitted

    def push(self, token_id: int) -> str:
        ids = self._ids
        ids.append(token_id)
        prefix_text = (
            self._decode(ids[self._prefix : self._read]) if self._read > self._prefix else ""
        )
        text = self._decode(ids[self._prefix :])
        if len(text) <= len(prefix_text) or text.endswith("\ufffd"):
            return ""  # nothing visible yet, or half a character: wait for the rest
        self._prefix, self._read = self._read, len(ids)
        return text[len(prefix_text) :]

    def flush(self) -> str:
        ids = self._ids
        prefix_text = (
            self._decode(ids[self._prefix : self._read]) if self._read > self._prefix else ""
        )
        text = self._decode(ids[self._prefix :])
        self._prefix = self._read = len(ids)
        return text[len(prefix_text) :]


class Detokenizer(Protocol):
    def push(self, token_id: int) -> str: ...
    def flush(self) -> str: ...


class ReplyAssembler:
    """Turns sampled token ids into emitted text pieces, and the final chunk with usage.

    One place for what every token-level engine does per token: end-of-turn tokens, counting,
    incremental detokenizing and stop sequences.
    """

    def __init__(
        self,
        stops: Iterable[str],
        detokenizer: Detokenizer,
        eos: Container[int],
        emit: Callable[[GenerationChunk], None],
    ) -> None:
        self._stops = StopDetector(stops)
        self._detokenizer = detokenizer
        self._eos = eos
        self._emit = emit
        self._stopped_by_sequence = False
        self.finish: FinishReason = "length"
        self.generated = 0

    @property
    def done(self) -> bool:
        return self.finish == "stop"

    def push(self, token_id: int) -> bool:
        """Take one sampled token; True once the reply is over (end of turn or a stop)."""
        if token_id in self._eos:
            self.finish = "stop"
            return True
        self.generated += 1
        text, hit = self._stops.feed(self._detokenizer.push(token_id))
        if text:
            self._emit(GenerationChunk(text=text))
        if hit:
            self.finish, self._stopped_by_sequence = "stop", True
        return hit

    def final(self, prompt_tokens: int) -> GenerationChunk:
        tail = ""
        if not self._stopped_by_sequence:
            # Text held back as a possible stop-sequence start turned out not to be one.
            tail, hit = self._stops.feed(self._detokenizer.flush())
            if not hit:
                tail += self._stops.flush()
        return GenerationChunk(
            text=tail,
            finish_reason=self.finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=self.generated,
        )
