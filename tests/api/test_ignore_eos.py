"""ignore_eos (vLLM's and llama-server's extension) on the real SmolLM2 model, through the
openai SDK's extra_body: the reply runs to max_tokens past the end-of-generation token."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion

from tests.conftest import MODEL_ID

MESSAGES = [{"role": "user", "content": "Is the sky blue? Answer yes or no."}]
LIMIT = 48


def greedy(client: openai.OpenAI, *, ignore_eos: bool = False, **fields: Any) -> ChatCompletion:
    """The test question, greedy, up to LIMIT tokens, not streamed."""
    return client.chat.completions.create(
        model=MODEL_ID,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=LIMIT,
        temperature=0,
        extra_body={"ignore_eos": True} if ignore_eos else None,
        **fields,
    )


def test_plain_reply_stops_early_and_ignore_eos_runs_to_max_tokens(client: openai.OpenAI) -> None:
    plain = greedy(client)
    assert plain.choices[0].finish_reason == "stop"  # the premise: the model ends by itself
    assert plain.usage is not None and plain.usage.completion_tokens < LIMIT
    full = greedy(client, ignore_eos=True)
    assert full.choices[0].finish_reason == "length"
    assert full.usage is not None and full.usage.completion_tokens == LIMIT
    assert "<|im_end|>" not in (full.choices[0].message.content or "")


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_streamed_and_sampled(client: openai.OpenAI, temperature: float) -> None:
    finish, usage = None, None
    for chunk in client.chat.completions.create(
        model=MODEL_ID,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=LIMIT,
        temperature=temperature,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    ):
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
        if chunk.usage is not None:
            usage = chunk.usage
    assert finish == "length" and usage is not None and usage.completion_tokens == LIMIT


def test_with_a_grammar_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=MODEL_ID,
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=8,
            response_format={"type": "json_object"},
            extra_body={"ignore_eos": True},
        )
    assert refused.value.body["param"] == "ignore_eos"  # type: ignore[index]


def test_logprobs_are_the_models_own(client: openai.OpenAI) -> None:
    """Where the plain reply ended, the model's top choice is still the end token: the mask that
    skips it must not leak into the logprobs (the logits row is masked and put back)."""
    plain = greedy(client)
    assert plain.usage is not None
    ended_at = plain.usage.completion_tokens  # the end token's position
    full = greedy(client, ignore_eos=True, logprobs=True, top_logprobs=2)
    content = full.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == LIMIT
    there = content[ended_at]
    assert there.top_logprobs[0].logprob > there.logprob  # the end token, not sampled
    assert all(item.logprob <= 0 for item in content)


@pytest.mark.parametrize("ignore_eos", [False, True])
def test_greedy_picks_the_same_tokens_with_logprobs(
    client: openai.OpenAI, ignore_eos: bool
) -> None:
    """Logprobs read the model's own row next to the argmax: asking for them changes nothing."""
    plain = greedy(client, ignore_eos=ignore_eos)
    with_logprobs = greedy(client, ignore_eos=ignore_eos, logprobs=True)
    assert plain.choices[0].message.content == with_logprobs.choices[0].message.content
    assert plain.usage == with_logprobs.usage
