"""Tables: conversations, their messages, the usage ledger (one row per generation), and the
API keys kept in the database with their quota counters.

Every conversation has an owner: the principal that created it (the API key's non-secret id,
or `anonymous` when API keys are off). Messages belong to their conversation's owner.

Timestamps are naive UTC on purpose: `date(created_at)` then means the same day on SQLite
and on Postgres, whatever the server's time zone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


ANONYMOUS = "anonymous"


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_owner_created_at", "owner", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), default=ANONYMOUS, server_default=ANONYMOUS)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    system_prompt: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(255))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    # Next free sequence number; bumped by the UPDATE that opens every append, which
    # serialises appends to one conversation across processes (a row lock on Postgres).
    message_count: Mapped[int] = mapped_column(Integer, default=0)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (UniqueConstraint("conversation_id", "seq", name="uq_messages_seq"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    tokens: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class CompletionRecord(Base):
    """The usage ledger: what each generation cost and how it went."""

    __tablename__ = "completion_records"
    __table_args__ = (Index("ix_completion_records_created_at", "created_at"),)

    # Made by the service, so a retried batch insert is idempotent (ON CONFLICT DO NOTHING).
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64), index=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(255))
    engine: Mapped[str] = mapped_column(String(64))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))  # ok | error | cancelled
    api_key_id: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ApiKey(Base):
    """An API key made by `genai-service keys create` or POST /v1/admin/keys.

    Only the SHA-256 of the key is kept: a key is 256 random bits, so a plain hash is as good
    as a slow one and costs one indexed look-up per request. `prefix` (the key's first
    characters) is there so people can tell their keys apart; it cannot be used to log in.
    """

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_key_hash", "key_hash", unique=True),)

    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # the principal, `key_...`
    name: Mapped[str] = mapped_column(String(255))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(16))  # admin | user
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)  # None: unlimited
    tokens_per_day: Mapped[int | None] = mapped_column(Integer)


class ApiKeyCounter(Base):
    """What a key used in one quota window: requests in a UTC minute, tokens in a UTC day.

    Kept in the database, so a restart (or another replica) does not reset a quota.
    """

    __tablename__ = "api_key_counters"
    __table_args__ = (
        PrimaryKeyConstraint("key_id", "period", "window_start", name="pk_api_key_counters"),
    )

    key_id: Mapped[str] = mapped_column(String(16))
    period: Mapped[str] = mapped_column(String(8))  # minute | day
    window_start: Mapped[datetime] = mapped_column(DateTime)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    tokens: Mapped[int] = mapped_column(Integer, default=0)
