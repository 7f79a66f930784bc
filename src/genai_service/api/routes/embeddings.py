"""POST /v1/embeddings."""

from __future__ import annotations

import base64
from array import array

from fastapi import APIRouter, Request

from genai_service.api.deps import State, resolve_embedder
from genai_service.api.errors import APIError
from genai_service.api.schemas import (
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
)
from genai_service.serving.usage import record_embeddings

router = APIRouter(tags=["openai"])


def _base64(vector: list[float]) -> str:
    # What the OpenAI SDKs decode: little-endian float32, base64 (x86 and ARM are little-endian).
    return base64.b64encode(array("f", vector).tobytes()).decode("ascii")


@router.post("/embeddings", response_model=EmbeddingResponse)
async def embeddings(body: EmbeddingRequest, state: State, request: Request) -> EmbeddingResponse:
    engine = resolve_embedder(state, body.model)
    usage = record_embeddings(request, engine)  # one /v1/usage record, like a generation
    try:
        vectors, tokens = await engine.embed(body.texts())
    except Exception:
        usage.finish("error")
        raise
    except BaseException:  # the client went away
        usage.finish("cancelled")
        raise
    usage.prompt_tokens = tokens
    usage.finish("ok")
    size = len(vectors[0]) if vectors else 0
    if body.dimensions is not None and body.dimensions != size:
        raise APIError(
            400,
            f"The model '{engine.info.id}' returns {size}-dimensional embeddings; "
            f"dimensions={body.dimensions} is not supported.",
            param="dimensions",
            code="invalid_value",
        )
    data = [
        EmbeddingData(index=i, embedding=_base64(vec) if body.encoding_format == "base64" else vec)
        for i, vec in enumerate(vectors)
    ]
    return EmbeddingResponse(
        data=data,
        model=engine.info.id,
        usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
    )
