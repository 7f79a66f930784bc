"""Tool calling in the OpenAI format (`tools`, `tool_choice`, `tool_calls`, `tool` messages).

The tools are described to the model in a system turn (their JSON schemas), and a call is the
reply `{"name": ..., "arguments": {...}}`:

- `tool_choice: "required"` or a named function: the reply is constrained by a grammar built from
  the tools' parameter schemas (structured outputs), so the call always parses and its
  arguments always validate. One call per reply (`parallel_tool_calls` permits more, it does not
  require them).
- `tool_choice: "auto"` (the default when tools are given): the model chooses; a reply that is
  such a JSON object naming a given tool becomes a tool call, anything else stays text.
- `"none"`: the tools are not shown to the model.

History turns are rendered as text every chat template accepts: an assistant turn's calls as the
same JSON, and a `tool` turn as a user turn carrying the result.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from genai_service.api.schemas import (
    ChatCompletionRequest,
    ChatMessageIn,
    FunctionCall,
    ToolCall,
    ToolDefinition,
)
from genai_service.engines.base import ChatMessage

INSTRUCTIONS = (
    "You can call these functions. To call one, reply with only a JSON object "
    '{"name": <function name>, "arguments": <arguments object>} and nothing else. '
    "Otherwise answer normally.\nFunctions:\n"
)


def messages(body: ChatCompletionRequest) -> list[ChatMessage]:
    """The chat turns for the template: the tool instructions, then the history as text."""
    tools = body.callable_tools()
    turns = [_turn(m) for m in body.messages]
    if not tools:
        return turns
    listing = "\n".join(
        json.dumps(
            {
                "name": t.function.name,
                "description": t.function.description or "",
                "parameters": t.function.parameters,
            }
        )
        for t in tools
    )
    instructions = INSTRUCTIONS + listing
    if turns and turns[0].role == "system":
        return [ChatMessage("system", f"{turns[0].content}\n\n{instructions}"), *turns[1:]]
    return [ChatMessage("system", instructions), *turns]


def _turn(message: ChatMessageIn) -> ChatMessage:
    if message.role == "tool":
        return ChatMessage(
            "user", f"Function result ({message.tool_call_id or 'call'}):\n{message.text()}"
        )
    if message.role == "assistant" and message.tool_calls:
        calls = [
            {"name": c.function.name, "arguments": _arguments(c.function.arguments)}
            for c in message.tool_calls
        ]
        text = json.dumps(calls[0] if len(calls) == 1 else calls)
        return ChatMessage("assistant", f"{message.text()}\n{text}".strip())
    return ChatMessage(message.role, message.text())


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_call(text: str, tools: list[ToolDefinition]) -> ToolCall | None:
    """The reply as a call to one of `tools`, or None when it is not one."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    names = {t.function.name for t in tools}
    if not (
        isinstance(value, dict)
        and value.get("name") in names
        and isinstance(value.get("arguments", {}), dict)
    ):
        return None
    return ToolCall(
        id=f"call_{uuid.uuid4().hex[:24]}",
        function=FunctionCall(name=value["name"], arguments=json.dumps(value.get("arguments", {}))),
    )


class ToolCallStream:
    """Streaming: text that may turn out to be a call is held back until the reply ends."""

    def __init__(self, tools: list[ToolDefinition], forced: bool) -> None:
        self.tools = tools
        self.mode = "call" if forced else "undecided"
        self.buffer = ""

    def feed(self, text: str) -> str:
        """The text to stream now as content ("" while it may still be a call)."""
        if self.mode == "content":
            return text
        self.buffer += text
        if self.mode == "undecided":
            head = self.buffer.lstrip()
            if not head:
                return ""
            if head.startswith("{"):
                self.mode = "call"
                return ""
            self.mode = "content"
            out, self.buffer = self.buffer, ""
            return out
        return ""

    def finish(self) -> tuple[ToolCall | None, str]:
        """The call the reply made, or the held-back text to send as content."""
        if self.mode == "content":
            return None, ""
        call = parse_call(self.buffer, self.tools)
        return (call, "") if call is not None else (None, self.buffer)
