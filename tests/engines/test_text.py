"""Stop-sequence detection and incremental UTF-8 decoding."""

from __future__ import annotations

from genai_service.engines.text import StopDetector, Utf8Stream


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
