"""Stop-sequence detection and incremental UTF-8 decoding."""

from __future__ import annotations

from collections.abc import Callable

from genai_service.engines.base import GenerationChunk
from genai_service.engines.text import (
    IncrementalDetokenizer,
    ReplyAssembler,
    StopDetector,
    Utf8Stream,
)


def feed_all(detector: StopDetector, pieces: list[str]) -> tuple[str, bool]:
    out = []
    for piece in pieces:
        text, hit = detector.feed(piece)
        out.append(text)
        if hit:
            return "".join(out), True
    return "".join(out) + detector.flush(), False


def test_no_stops_passes_through() -> None:
    assert feed_all(StopDetector([]), ["a", "b"]) == ("ab", False)


def test_stop_split_across_pieces_is_never_emitted() -> None:
    detector = StopDetector(["END"])
    assert detector.feed("hello E") == ("hello ", False)
    assert detector.feed("N") == ("", False)
    assert detector.feed("D and more") == ("", True)


def test_false_start_is_released() -> None:
    assert feed_all(StopDetector(["END"]), ["hello E", "ND", "x"]) == ("hello ", True)
    assert feed_all(StopDetector(["END"]), ["hello E", "Nx"]) == ("hello ENx", False)


def test_earliest_of_several_stops_wins() -> None:
    assert feed_all(StopDetector(["b", "a"]), ["xxab"]) == ("xx", True)


def test_utf8_split_across_tokens() -> None:
    data = "é€😀".encode()
    stream = Utf8Stream()
    out = "".join(stream.decode(data[i : i + 1]) for i in range(len(data)))
    assert out + stream.flush() == "é€😀"


def test_utf8_dangling_bytes_become_replacement() -> None:
    stream = Utf8Stream()
    assert stream.decode("€".encode()[:2]) == ""
    assert stream.flush() == "\ufffd"


# --- IncrementalDetokenizer: a windowed decode, not the whole reply per token --------------------
BYTE_VOCAB = {i: bytes([i]) for i in range(256)}


def _byte_level(calls: list[int]) -> Callable[[list[int]], str]:
    """A byte-level BPE stand-in: each id is one byte; records how many ids each call decodes."""

    def decode(ids: list[int]) -> str:
        calls.append(len(ids))
        return b"".join(BYTE_VOCAB[i] for i in ids).decode("utf-8", errors="replace")

    return decode


def _push_all(detok: IncrementalDetokenizer, ids: list[int]) -> list[str]:
    return [detok.push(i) for i in ids] + [detok.flush()]


def test_detokenizer_multibyte_and_emoji_split_across_tokens() -> None:
    text = "Grüße, 東京 😀👍🏽 done"
    calls: list[int] = []
    pieces = _push_all(IncrementalDetokenizer(_byte_level(calls)), list(text.encode()))
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)  # half a character is never sent


def test_detokenizer_is_not_quadratic() -> None:
    calls: list[int] = []
    ids = list(("word " * 400).encode())
    pieces = _push_all(IncrementalDetokenizer(_byte_level(calls)), ids)
    assert "".join(pieces) == "word " * 400
    assert max(calls) <= 8  # each decode sees a short window, not the 2000 tokens so far


def test_detokenizer_keeps_sentencepiece_spaces() -> None:
    vocab = {1: "▁Hello", 2: ",", 3: "▁wor", 4: "ld", 5: "!"}

    def decode(ids: list[int]) -> str:
        # SentencePiece drops the leading space of the first word of what it decodes.
        return "".join(vocab[i] for i in ids).replace("▁", " ").removeprefix(" ")

    pieces = _push_all(IncrementalDetokenizer(decode), [1, 2, 3, 4, 5])
    assert "".join(pieces) == "Hello, world!"


def test_detokenizer_dangling_bytes_at_the_end_are_flushed() -> None:
    detok = IncrementalDetokenizer(_byte_level([]))
    assert detok.push(ord("a")) == "a"
    assert detok.push("😀".encode()[0]) == ""
    assert detok.flush() == "\ufffd"


def test_stop_sequence_across_tokens_with_multibyte_text() -> None:
    chunks: list[GenerationChunk] = []
    reply = ReplyAssembler(["ÉND"], IncrementalDetokenizer(_byte_level([])), {0}, chunks.append)
    for token in "café ÉND more".encode():
        if reply.push(token):
            break
    final = reply.final(prompt_tokens=3)
    assert "".join(c.text for c in chunks) + final.text == "café "
    assert final.finish_reason == "stop"
