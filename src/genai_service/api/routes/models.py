"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from fastapi import APIRouter

from genai_service.api.deps import State
from genai_service.api.errors import model_not_found
from genai_service.api.schemas import ModelCard, ModelList
from genai_service.engines.base import EmbeddingEngine, Engine

router = APIRouter(tags=["openai"])


def _card(engine: Engine | EmbeddingEngine) -> ModelCard:
    info = engine.info
    return ModelCard(id=info.id, created=info.created, owned_by=info.owned_by)


@router.get("/models", response_model=ModelList)
async def list_models(state: State) -> ModelList:
    return ModelList(data=[_card(engine) for engine in state.all_models()])


@router.get("/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, state: State) -> ModelCard:
    engine = state.find(model_id) or state.find_embedder(model_id)
    if engine is None:
        raise model_not_found(model_id)
    return _card(engine)
