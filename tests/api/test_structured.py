"""Structured outputs (`response_format`) on the real SmolLM2 model, through the openai SDK."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

from tests.conftest import MODEL_ID, RunningServer

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 24},
        "age": {"type": "integer"},
        "colour": {"enum": ["red", "green", "blue"]},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3},
    },
    "required": ["name", "age", "colour", "hobbies"],
    "additionalProperties": False,
}
MESSAGES: Any = [{"role": "user", "content": "Invent a person and describe them as JSON."}]


def person_format() -> Any:
    return {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON, "strict": True},
    }


def test_json_schema_validates_every_time(client: openai.OpenAI) -> None:
    # Sampled at 0.8 with different seeds: the grammar, not luck, keeps every reply valid.
    for seed in range(20):
        reply = client.chat.completions.create(
            model=MODEL_ID,
            messages=MESSAGES,
            response_format=person_format(),
            temperature=0.8,
            seed=seed,
            max_tokens=160,
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content or ""), PERSON)


def test_json_schema_streaming(client: openai.OpenAI) -> None:
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model=MODEL_ID,
            messages=MESSAGES,
            response_format=person_format(),
            temperature=0.8,
            seed=7,
            max_tokens=160,
            stream=True,
        )
        if chunk.choices
    ]
    assert len([p for p in pieces if p]) > 3  # it really streamed
    jsonschema.validate(json.loads("".join(pieces)), PERSON)


def test_json_object(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Give me a JSON object about a cat."}],
        response_format={"type": "json_object"},
        temperature=0.8,
        seed=1,
        max_tokens=200,
    )
    content = reply.choices[0].message.content or ""
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    else:  # cut by max_tokens: still a valid JSON prefix of an object
        assert content.lstrip().startswith("{")


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "integer", "minimum": 3}, "minimum"),
        ({"type": "string", "format": "email"}, "email"),
        ({"$ref": "https://example.com/schema.json"}, "https://example.com/schema.json"),
        ({"type": "object", "patternProperties": {"^a": {}}}, "patternProperties"),
    ],
)
def test_unsupported_schema_is_400(server: RunningServer, schema: Any, named: str) -> None:
    with server.http() as http:
        response = http.post(
            "/v1/chat/completions",
            json={
                "model": MODEL_ID,
                "messages": MESSAGES,
                "response_format": {"type": "json_schema", "json_schema": {"schema": schema}},
            },
        )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "response_format" and named in error["message"]
    assert server.state.limiter.active == 0
