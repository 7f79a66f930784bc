"""Legacy text completions, plain and streamed."""

from __future__ import annotations

import openai

from tests.conftest import MODEL_ID, RunningServer


def test_completion(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model=MODEL_ID, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert reply.object == "text_completion"
    assert reply.choices[0].text.strip()
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == 5
    assert reply.usage.completion_tokens <= 8


def test_completion_stop_and_echo(client: openai.OpenAI) -> None:
    prompt = "Count: one, two, three,"
    reply = client.completions.create(
        model=MODEL_ID, prompt=prompt, max_tokens=30, temperature=0, stop=["six"], echo=True
    )
    text = reply.choices[0].text
    assert text.startswith(prompt)
    assert "six" not in text


def test_streamed_completion_matches(client: openai.OpenAI) -> None:
    kwargs = {"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": 16, "temperature": 0}
    whole = client.completions.create(**kwargs)  # type: ignore[call-overload]
    chunks = list(
        client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})  # type: ignore[call-overload]
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert chunks[-1].usage == whole.usage
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_empty_prompt_is_400(server: RunningServer) -> None:
    with server.http() as http:
        response = http.post("/v1/completions", json={"model": MODEL_ID, "prompt": ""})
    assert response.status_code == 400 and response.json()["error"]["code"] == "empty_prompt"
    assert server.state.limiter.active == 0
