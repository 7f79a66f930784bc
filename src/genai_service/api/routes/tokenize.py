"""POST /tokenize and /detokenize: the model's own tokenizer, as vLLM and llama-server offer.

`messages` are rendered with the chat template first, so the count is exactly what a chat
request with them would use as its prompt.
"""

from __future__ import annotations

from fastapi import APIRouter

from genai_service.api.deps import State, resolve_engine
from genai_service.api.errors import APIError
from genai_service.api.schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from genai_service.engines.base import ChatMessage, Engine

router = APIRouter(tags=["tokenizer"])


def _no_tokenizer(engine: Engine) -> APIError:
    return APIError(
        400,
        f"The '{engine.info.engine}' engine of model '{engine.info.id}' has no local tokenizer.",
        param="model",
        code="unsupported_parameter",
    )


@router.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(body: TokenizeRequest, state: State) -> TokenizeResponse:
    engine = resolve_engine(state, body.model)
    if engine.info.engine == "upstream":
        raise _no_tokenizer(engine)
    if body.messages is not None:
        messages = [ChatMessage(m.role, m.text()) for m in body.messages]
        tokens = (await engine.chat_prompt(messages)).token_ids
    else:  # as /v1/completions sees it
        tokens = (await engine.text_prompt(body.prompt or "")).token_ids
    return TokenizeResponse(
        tokens=tokens, count=len(tokens), max_model_len=engine.info.context_length
    )


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(body: DetokenizeRequest, state: State) -> DetokenizeResponse:
    engine = resolve_engine(state, body.model)
    decode = getattr(engine, "detokenize", None)
    if decode is None:
        raise _no_tokenizer(engine)
    try:
        text = await decode(body.tokens)
    except ValueError as exc:
        raise APIError(400, str(exc), param="tokens", code="invalid_token") from None
    return DetokenizeResponse(prompt=text)
