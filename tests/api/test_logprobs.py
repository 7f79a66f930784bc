"""logprobs on chat and completions, the real SmolLM2 model, through the openai SDK."""

from __future__ import annotations

import math

import openai
import pytest

from tests.conftest import MODEL_ID, RunningServer

MESSAGES = [{"role": "user", "content": "Name three fruits."}]


def test_chat_logprobs_one_per_token_and_greedy_is_top(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL_ID,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert reply.usage is not None and len(entries) == reply.usage.completion_tokens
    assert "".join(e.token for e in entries) == choice.message.content
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert math.isclose(entry.logprob, entry.top_logprobs[0].logprob, abs_tol=1e-4)
        assert entry.bytes == list(entry.token.encode())


def test_streamed_chat_logprobs(client: openai.OpenAI) -> None:
    entries = []
    text = ""
    usage = None
    for chunk in client.chat.completions.create(
        model=MODEL_ID,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=10,
        temperature=0,
        logprobs=True,
        stream=True,
        stream_options={"include_usage": True},
    ):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.logprobs and choice.logprobs.content:
                entries.extend(choice.logprobs.content)
    assert usage is not None and len(entries) == usage.completion_tokens
    assert "".join(e.token for e in entries) == text


def test_completions_logprobs(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model=MODEL_ID, prompt="The sky is", max_tokens=6, temperature=0, logprobs=2, echo=True
    )
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs
    assert reply.usage is not None and len(logprobs.tokens) == reply.usage.completion_tokens
    assert logprobs.text_offset and logprobs.text_offset[0] == len("The sky is")
    assert logprobs.top_logprobs and all(len(t) <= 2 for t in logprobs.top_logprobs)


def test_top_logprobs_needs_logprobs(server: RunningServer) -> None:
    with server.http() as http:
        response = http.post(
            "/v1/chat/completions",
            json={"model": MODEL_ID, "messages": MESSAGES, "top_logprobs": 2},
        )
        assert response.status_code == 400
        too_many = http.post(
            "/v1/chat/completions",
            json={"model": MODEL_ID, "messages": MESSAGES, "logprobs": True, "top_logprobs": 21},
        )
        assert too_many.status_code == 400


@pytest.mark.parametrize("stream", [False, True])
def test_logprobs_with_structured_output(client: openai.OpenAI, stream: bool) -> None:
    # The grammar changes what is sampled, not what the model's distribution says.
    kwargs = {
        "model": MODEL_ID,
        "messages": MESSAGES,
        "max_tokens": 30,
        "temperature": 0,
        "logprobs": True,
        "response_format": {"type": "json_object"},
    }
    if stream:
        n = sum(
            len(c.choices[0].logprobs.content or [])
            for c in client.chat.completions.create(stream=True, **kwargs)  # type: ignore[call-overload]
            if c.choices and c.choices[0].logprobs
        )
        assert n > 0
    else:
        reply = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
        assert reply.choices[0].logprobs.content
