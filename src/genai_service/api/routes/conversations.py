"""Conversations: stored message histories that the model answers from.

POST /v1/conversations/{id}/messages builds the prompt from the stored history (oldest turns
dropped to fit the context window, the system prompt always kept), generates the reply and
stores the user and assistant turns in one transaction: both or neither. Posts to one
conversation run one at a time, on every replica (a Postgres advisory lock), so every
reply is built from the turns committed before it.

Every conversation belongs to the principal that created it (see `deps.get_principal`); any
other principal gets the same 404 as for an id that does not exist, so existence never leaks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from genai_service.api.auth import Principal, token_budget
from genai_service.api.deps import State, resolve_engine
from genai_service.api.errors import APIError, model_not_found
from genai_service.api.sse import StreamFormat, sse_response, usage_of
from genai_service.api.storage_deps import StorageDep, database_errors
from genai_service.api.storage_schemas import (
    ConversationDeleted,
    ConversationList,
    ConversationObject,
    ConversationTurn,
    CreateConversationRequest,
    MessageList,
    MessageObject,
    PostMessageRequest,
    TurnDelta,
    unix,
)
from genai_service.engines.base import ChatMessage, Completion, Engine, GenerationChunk, Prompt
from genai_service.serving.generation import Generation
from genai_service.storage import Storage
from genai_service.storage import repository as repo
from genai_service.storage.models import Conversation, Message

log = structlog.get_logger(__name__)
router = APIRouter(tags=["conversations"])


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _readable(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata as JSON can show it. Rows stored before lone surrogates were refused at the
    edge (the JSON column kept them as escapes) show U+FFFD instead of answering 500."""

    def clean(value: Any) -> Any:
        return _LONE_SURROGATE.sub("\ufffd", value) if isinstance(value, str) else value

    return {clean(k): clean(v) for k, v in metadata.items()}


def _conversation(c: Conversation) -> ConversationObject:
    return ConversationObject(
        id=c.id,
        created_at=unix(c.created_at),
        updated_at=unix(c.updated_at),
        system_prompt=c.system_prompt,
        model=c.model,
        metadata=_readable(c.metadata_ or {}),
        message_count=c.message_count,
    )


def _message(m: Message) -> MessageObject:
    return MessageObject(
        id=m.id,
        conversation_id=m.conversation_id,
        index=m.seq,
        role=m.role,
        content=m.content,
        tokens=m.tokens,
        created_at=unix(m.created_at),
    )


def _not_found(conversation_id: str) -> APIError:
    return APIError(
        404,
        f"No conversation found with id '{conversation_id}'.",
        param="conversation_id",
        code="conversation_not_found",
    )


async def _load(storage: Storage, conversation_id: str, owner: str) -> Conversation:
    async with database_errors(storage):
        conversation = await repo.get_conversation(storage.db, conversation_id, owner)
    if conversation is None:
        raise _not_found(conversation_id)
    return conversation


@router.post("/conversations", response_model=ConversationObject)
async def create_conversation(
    body: CreateConversationRequest, state: State, storage: StorageDep, owner: Principal
) -> ConversationObject:
    if body.model is not None and state.ready and state.find(body.model) is None:
        raise model_not_found(body.model)
    async with database_errors(storage):
        conversation = await repo.create_conversation(
            storage.db,
            owner=owner,
            system_prompt=body.system_prompt,
            metadata=body.metadata,
            model=body.model,
        )
    return _conversation(conversation)


@router.get("/conversations", response_model=ConversationList)
async def list_conversations(
    storage: StorageDep,
    owner: Principal,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    after: Annotated[
        str | None, Query(description="Cursor: the last conversation id of the previous page.")
    ] = None,
    order: Annotated[Literal["asc", "desc"], Query(description="By creation time.")] = "desc",
) -> ConversationList:
    """The caller's own conversations, newest first by default."""
    async with database_errors(storage):
        try:
            rows, has_more = await repo.list_conversations(
                storage.db, owner, limit=limit, after=after, order=order
            )
        except repo.InvalidCursor:
            raise APIError(
                400,
                f"'{after}' is not one of your conversations.",
                param="after",
                code="invalid_cursor",
            ) from None
    data = [_conversation(c) for c in rows]
    return ConversationList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=has_more,
    )


@router.get("/conversations/{conversation_id}", response_model=ConversationObject)
async def get_conversation(
    conversation_id: str, storage: StorageDep, owner: Principal
) -> ConversationObject:
    return _conversation(await _load(storage, conversation_id, owner))


@router.delete("/conversations/{conversation_id}", response_model=ConversationDeleted)
async def delete_conversation(
    conversation_id: str, storage: StorageDep, owner: Principal
) -> ConversationDeleted:
    async with database_errors(storage):
        deleted = await repo.delete_conversation(storage.db, conversation_id, owner)
    if not deleted:
        raise _not_found(conversation_id)
    return ConversationDeleted(id=conversation_id)


@router.get("/conversations/{conversation_id}/messages", response_model=MessageList)
async def list_messages(
    conversation_id: str,
    storage: StorageDep,
    owner: Principal,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    after: Annotated[
        str | None, Query(description="Cursor: the last message id of the previous page.")
    ] = None,
    order: Annotated[Literal["asc", "desc"], Query(description="By position.")] = "asc",
) -> MessageList:
    await _load(storage, conversation_id, owner)
    async with database_errors(storage):
        try:
            rows, has_more = await repo.list_messages(
                storage.db, conversation_id, limit=limit, after=after, order=order
            )
        except repo.InvalidCursor:
            raise APIError(
                400,
                f"'{after}' is not a message of this conversation.",
                param="after",
                code="invalid_cursor",
            ) from None
    data = [_message(m) for m in rows]
    return MessageList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=has_more,
    )


async def fit_history(
    engine: Engine,
    system_prompt: str | None,
    history: Sequence[Message],
    user_content: str,
    reserve: int,
) -> tuple[Prompt, int]:
    """The prompt with as many of the newest turns as fit, and how many messages were left out.

    Whole user/assistant pairs are dropped from the oldest end (a binary search over the
    number dropped, so a long history costs a few tokenizations, not one per turn).
    """
    head = [ChatMessage("system", system_prompt)] if system_prompt else []
    turns = [ChatMessage(m.role, m.content) for m in history]
    user = ChatMessage("user", user_content)
    budget = engine.info.context_length - reserve

    async def build(drop: int) -> Prompt:
        return await engine.chat_prompt([*head, *turns[drop:], user])

    prompt = await build(0)
    if len(prompt.token_ids) <= budget or not turns:
        return prompt, 0
    # Drop counts step in pairs; an odd-length history (never written by us) ends on 1.
    steps = [*range(2, len(turns), 2), len(turns)]
    lo, hi = 0, len(steps) - 1
    best = await build(steps[hi])
    best_drop = steps[hi]
    while lo < hi:
        mid = (lo + hi) // 2
        candidate = await build(steps[mid])
        if len(candidate.token_ids) <= budget:
            best, best_drop, hi = candidate, steps[mid], mid
        else:
            lo = mid + 1
    return best, best_drop


def _turn(
    conversation_id: str,
    model: str,
    stored: list[Message],
    result: GenerationChunk | Completion,
    dropped: int,
) -> ConversationTurn:
    return ConversationTurn(
        conversation_id=conversation_id,
        model=model,
        messages=[_message(m) for m in stored],
        finish_reason=result.finish_reason or "stop",
        dropped_messages=dropped,
        usage=usage_of(result),
    )


async def _store_turn(
    storage: Storage, conversation_id: str, user: str, prompt_tokens: int, reply: str, tokens: int
) -> list[Message]:
    async with database_errors(storage):
        try:
            return await repo.append_messages(
                storage.db,
                conversation_id,
                [
                    repo.NewMessage("user", user, None),
                    repo.NewMessage("assistant", reply, tokens),
                ],
            )
        except repo.ConversationNotFound:
            # Deleted while the reply was being written: nothing is stored.
            raise _not_found(conversation_id) from None


@router.post(
    "/conversations/{conversation_id}/messages",
    response_model=ConversationTurn,
    dependencies=[Depends(token_budget)],  # it generates: the key's daily tokens apply
)
async def post_message(
    conversation_id: str,
    body: PostMessageRequest,
    request: Request,
    state: State,
    storage: StorageDep,
    owner: Principal,
) -> Any:
    conversation = await _load(storage, conversation_id, owner)
    engine = resolve_engine(state, body.model or conversation.model)
    # One turn at a time per conversation, across replicas (storage/repository.py).
    async with database_errors(storage):
        unlock = await storage.locks.acquire(storage.db, conversation_id)
    handed_over = False
    try:
        async with database_errors(storage):
            past = await repo.history(storage.db, conversation_id)
        context = engine.info.context_length
        reserve = body.max_tokens or min(state.settings.default_max_tokens, context // 4)
        prompt, dropped = await fit_history(
            engine, conversation.system_prompt, past, body.content, reserve
        )

        async def store(result: Completion) -> list[Message]:
            # The generation's on_finish hook: the turn is stored only once the reply is whole.
            return await _store_turn(
                storage,
                conversation_id,
                body.content,
                result.prompt_tokens,
                result.text,
                result.completion_tokens,
            )

        generation = await state.generations.start(request, engine, prompt, body, on_finish=store)
        model = engine.info.id
        if body.stream:

            def final(last: GenerationChunk, done: Generation, _: int) -> list[ConversationTurn]:
                return [_turn(conversation_id, model, done.finished, last, dropped)]

            fmt = StreamFormat(
                delta=lambda piece, _: TurnDelta(conversation_id=conversation_id, delta=piece.text),
                final=final,
            )
            handed_over = True  # the stream releases the lock when it ends
            return sse_response(generation, fmt, on_close=unlock)
        result = await generation.complete()
        turn = _turn(conversation_id, model, generation.finished, result, dropped)
        return JSONResponse(turn.model_dump())
    finally:
        if not handed_over:
            unlock()
