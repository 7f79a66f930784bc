"""Request and response models of the conversations and usage APIs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from genai_service.api.schemas import SamplingFields, Usage


def unix(moment: datetime) -> int:
    """Naive UTC (as stored) to a unix timestamp."""
    return int(moment.replace(tzinfo=UTC).timestamp())


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --- conversations -------------------------------------------------------------------------
class CreateConversationRequest(_Request):
    system_prompt: str | None = Field(None, max_length=100_000)
    metadata: dict[str, str] | None = Field(
        None, description="Up to 16 string pairs (keys up to 64 characters, values up to 512)."
    )
    model: str | None = Field(None, description="Model for replies; default: the server's.")

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return value
        if len(value) > 16:
            raise ValueError("at most 16 metadata pairs are allowed")
        for key, item in value.items():
            if len(key) > 64 or len(item) > 512:
                raise ValueError("metadata keys are limited to 64 characters, values to 512")
        return value


class ConversationObject(BaseModel):
    id: str
    object: Literal["conversation"] = "conversation"
    created_at: int
    updated_at: int
    system_prompt: str | None
    model: str | None
    metadata: dict[str, Any]
    message_count: int


class ConversationList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ConversationObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ConversationDeleted(BaseModel):
    id: str
    object: Literal["conversation.deleted"] = "conversation.deleted"
    deleted: bool = True


class MessageObject(BaseModel):
    id: str
    object: Literal["conversation.message"] = "conversation.message"
    conversation_id: str
    index: int = Field(description="Position in the conversation, from 0.")
    role: str
    content: str
    tokens: int | None = None
    created_at: int


class MessageList(BaseModel):
    object: Literal["list"] = "list"
    data: list[MessageObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class PostMessageRequest(SamplingFields):
    content: str = Field(min_length=1, description="The user's message.")
    model: str | None = None
    stream: bool = False


class ConversationTurn(BaseModel):
    object: Literal["conversation.turn"] = "conversation.turn"
    conversation_id: str
    model: str
    messages: list[MessageObject] = Field(description="The stored user and assistant messages.")
    finish_reason: str
    dropped_messages: int = Field(
        0, description="Oldest messages left out of the prompt to fit the context window."
    )
    usage: Usage


class TurnDelta(BaseModel):
    object: Literal["conversation.turn.delta"] = "conversation.turn.delta"
    conversation_id: str
    delta: str


# --- usage ---------------------------------------------------------------------------------
class UsageBucket(BaseModel):
    day: str
    model: str
    api_key_id: str | None
    requests: int
    ok: int
    errors: int
    cancelled: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class UsageTotals(BaseModel):
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class UsageReport(BaseModel):
    object: Literal["usage.report"] = "usage.report"
    start: int
    end: int
    data: list[UsageBucket]
    totals: UsageTotals
