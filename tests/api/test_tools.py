"""Tool calling on the real SmolLM2 model through the openai SDK, plus the parsing rules."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai

from genai_service.api.schemas import ToolDefinition
from genai_service.api.tools import ToolCallStream, parse_call
from tests.conftest import MODEL_ID, RunningServer

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 30},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "maxLength": 30}},
    "required": ["timezone"],
    "additionalProperties": False,
}
TOOLS: Any = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER},
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "Local time", "parameters": TIME},
    },
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


def check_call(name: str, arguments: str) -> None:
    jsonschema.validate(json.loads(arguments), SCHEMAS[name])


def test_named_tool_call_validates_every_time(client: openai.OpenAI) -> None:
    choice: Any = {"type": "function", "function": {"name": "get_weather"}}
    for seed in range(20):
        reply = client.chat.completions.create(
            model=MODEL_ID,
            messages=ASK,
            tools=TOOLS,
            tool_choice=choice,
            temperature=0.8,
            seed=seed,
            max_tokens=80,
        )
        out = reply.choices[0]
        assert out.finish_reason == "tool_calls" and out.message.content is None
        assert out.message.tool_calls and len(out.message.tool_calls) == 1
        call = out.message.tool_calls[0]
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name == "get_weather"
        check_call(call.function.name, call.function.arguments)


def test_required_picks_one_of_the_tools(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL_ID,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        temperature=0,
        max_tokens=80,
    )
    call = reply.choices[0].message.tool_calls[0]  # type: ignore[index]
    check_call(call.function.name, call.function.arguments)


def test_streamed_tool_call_assembles(client: openai.OpenAI) -> None:
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in client.chat.completions.create(
        model=MODEL_ID,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        temperature=0.8,
        seed=3,
        max_tokens=80,
        stream=True,
    ):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            assert not choice.delta.content  # a forced call streams no text
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += delta.id or ""
                if delta.function:
                    entry["name"] += delta.function.name or ""
                    entry["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls" and list(calls) == [0]
    assert calls[0]["id"].startswith("call_")
    check_call(calls[0]["name"], calls[0]["arguments"])


def test_history_with_tool_results_and_none(client: openai.OpenAI) -> None:
    history: Any = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city": "Paris", "unit": "celsius"}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny"},
    ]
    reply = client.chat.completions.create(
        model=MODEL_ID,
        messages=history,
        tools=TOOLS,
        tool_choice="none",
        temperature=0,
        max_tokens=16,
    )
    out = reply.choices[0]
    assert out.message.tool_calls is None and out.message.content
    assert out.finish_reason in ("stop", "length")


def test_bad_tool_requests_are_400(server: RunningServer) -> None:
    with server.http() as http:
        unknown = http.post(
            "/v1/chat/completions",
            json={
                "model": MODEL_ID,
                "messages": ASK,
                "tools": TOOLS,
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
        )
        assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "tool_choice"
        ranged = [
            {
                "type": "function",
                "function": {
                    "name": "f",
                    "parameters": {"type": "object", "properties": {"n": {"minimum": 1}}},
                },
            }
        ]
        bad = http.post(
            "/v1/chat/completions",
            json={"model": MODEL_ID, "messages": ASK, "tools": ranged, "tool_choice": "required"},
        )
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "tools" and "minimum" in bad.text


# --- rules (no model) ------------------------------------------------------------------------
def tool_defs() -> list[ToolDefinition]:
    return [ToolDefinition.model_validate(t) for t in TOOLS]


def test_parse_call_accepts_only_calls_to_given_tools() -> None:
    call = parse_call('{"name": "get_time", "arguments": {"timezone": "UTC"}}', tool_defs())
    assert call is not None and json.loads(call.function.arguments) == {"timezone": "UTC"}
    assert parse_call('{"name": "rm_rf", "arguments": {}}', tool_defs()) is None
    assert parse_call("It is sunny.", tool_defs()) is None
    assert parse_call('{"name": "get_time", "arguments": "x"}', tool_defs()) is None


def test_auto_stream_holds_back_only_what_may_be_a_call() -> None:
    text = ToolCallStream(tool_defs(), forced=False)
    assert text.feed("  ") == "" and text.feed("Sunny") == "  Sunny" and text.feed("!") == "!"
    assert text.finish() == (None, "")
    call = ToolCallStream(tool_defs(), forced=False)
    assert call.feed('{"name": "get_time", ') == "" and call.feed('"arguments": {}}') == ""
    made, rest = call.finish()
    assert made is not None and made.function.name == "get_time" and rest == ""
    not_call = ToolCallStream(tool_defs(), forced=False)
    not_call.feed('{"a": 1}')
    assert not_call.finish() == (None, '{"a": 1}')
