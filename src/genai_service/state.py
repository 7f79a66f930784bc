"""What the running service holds: its settings, loaded engines, the generation service and
readiness."""

from __future__ import annotations

from dataclasses import dataclass, field

from genai_service.engines.base import EmbeddingEngine, Engine
from genai_service.serving.generation import GenerationService
from genai_service.serving.limiter import GenerationLimiter
from genai_service.settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    limiter: GenerationLimiter
    generations: GenerationService
    engines: dict[str, Engine] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    ready: bool = False
    reason: str = "starting"
    # The model load failed: final until the settings change and the service restarts.
    failed: bool = False
    default_model: str | None = None
    # Embedding models (/v1/embeddings), keyed by model id like `engines`.
    embedders: dict[str, EmbeddingEngine] = field(default_factory=dict)
    default_embedding_model: str | None = None

    def add_engine(self, engine: Engine, *aliases: str) -> None:
        self.engines[engine.info.id] = engine
        self.default_model = self.default_model or engine.info.id
        for alias in aliases:
            self.aliases.setdefault(alias, engine.info.id)

    def find(self, model: str | None) -> Engine | None:
        name = model or self.default_model
        if name is None:
            return None
        return self.engines.get(self.aliases.get(name, name))

    def add_embedder(self, engine: EmbeddingEngine, *aliases: str) -> None:
        self.embedders[engine.info.id] = engine
        self.default_embedding_model = self.default_embedding_model or engine.info.id
        for alias in aliases:
            self.aliases.setdefault(alias, engine.info.id)

    def find_embedder(self, model: str | None) -> EmbeddingEngine | None:
        name = model or self.default_embedding_model
        if name is None:
            return None
        return self.embedders.get(self.aliases.get(name, name))

    def engine_trouble(self) -> str | None:
        """Why a loaded model cannot serve right now (its engine process restarts, its upstream
        is down), if so."""
        for model_id, engine in [*self.engines.items(), *self.embedders.items()]:
            reason = getattr(engine, "unavailable", None)
            if reason:
                return f"model '{model_id}': {reason}"
        return None

    def all_models(self) -> list[Engine | EmbeddingEngine]:
        return [*self.engines.values(), *self.embedders.values()]
