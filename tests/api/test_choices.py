"""n > 1: independent choices of one prompt, decoded in one batch, usage summed."""

from __future__ import annotations

import openai

from tests.conftest import MODEL_ID, RunningServer

MESSAGES: list = [{"role": "user", "content": "Write a one-line poem about the sea."}]


def test_chat_n_choices(client: openai.OpenAI) -> None:
    one = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=12, n=1)
    reply = client.chat.completions.create(
        model=MODEL_ID, messages=MESSAGES, max_tokens=12, n=3, temperature=1.0, seed=5
    )
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.message.content for c in reply.choices)
    assert len({c.message.content for c in reply.choices}) > 1  # not three copies
    assert reply.usage is not None and one.usage is not None
    assert reply.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counts once
    assert 12 < reply.usage.completion_tokens <= 3 * 12  # summed (a choice may stop early)
    again = client.chat.completions.create(
        model=MODEL_ID, messages=MESSAGES, max_tokens=12, n=3, temperature=1.0, seed=5
    )
    assert [c.message.content for c in again.choices] == [c.message.content for c in reply.choices]


def test_streamed_n_choices(client: openai.OpenAI) -> None:
    texts = {0: "", 1: ""}
    finished = set()
    usage = None
    for chunk in client.chat.completions.create(
        model=MODEL_ID,
        messages=MESSAGES,
        max_tokens=8,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    ):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1} and all(texts.values())
    assert usage is not None and 8 < usage.completion_tokens <= 16


def test_completions_n(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL_ID, prompt="Once upon a time", max_tokens=5, n=2)
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.usage is not None and 5 < reply.usage.completion_tokens <= 10


def test_n_beyond_the_slots_is_400(server: RunningServer) -> None:
    slots = server.state.limiter.slots
    with server.http() as http:
        response = http.post(
            "/v1/chat/completions",
            json={"model": MODEL_ID, "messages": MESSAGES, "n": slots + 1},
        )
    assert response.status_code == 400 and response.json()["error"]["param"] == "n"
    assert server.state.limiter.active == 0
