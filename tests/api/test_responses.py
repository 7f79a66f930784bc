"""/v1/responses with the official openai SDK on the real SmolLM2 model."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

from tests.conftest import MODEL_ID


def test_text_input(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL_ID, input="What is the capital of France?", max_output_tokens=16, temperature=0
    )
    assert response.object == "response" and response.id.startswith("resp")
    assert response.output_text and response.status in ("completed", "incomplete")
    assert response.usage is not None and 0 < response.usage.output_tokens <= 16
    if response.status == "incomplete":
        assert (
            response.incomplete_details
            and response.incomplete_details.reason == "max_output_tokens"
        )


def test_message_input_streams_and_completes(client: openai.OpenAI) -> None:
    kinds: list[str] = []
    deltas = ""
    final: Any = None
    with client.responses.stream(
        model=MODEL_ID,
        instructions="Answer in one short sentence.",
        input=[{"role": "user", "content": "Name a colour."}],
        max_output_tokens=200,
        temperature=0,
    ) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas += event.delta
        final = stream.get_final_response()
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert "response.output_text.delta" in kinds and kinds[-1] == "response.completed"
    assert final.output_text == deltas and deltas
    assert final.status == "completed" and final.usage.output_tokens > 0


def test_json_schema_format(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    }
    response = client.responses.create(
        model=MODEL_ID,
        input="Name a city as JSON.",
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
        temperature=0.8,
        max_output_tokens=60,
    )
    jsonschema.validate(json.loads(response.output_text), schema)


@pytest.mark.parametrize(
    ("field", "value"),
    [("previous_response_id", "resp_123"), ("tools", [{"type": "function", "name": "f"}])],
)
def test_unsupported_fields_are_400(client: openai.OpenAI, field: str, value: Any) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=MODEL_ID, input="hi", **{field: value})
    assert refused.value.body["param"] == field  # type: ignore[index]
