"""What the running service holds: its settings, loaded engines, limiter and readiness."""

from __future__ import annotations

from dataclasses import dataclass, field

from genai_service.engines.base import Engine
from genai_service.limiter import GenerationLimiter
from genai_service.settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    limiter: GenerationLimiter
    engines: dict[str, Engine] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    ready: bool = False
    reason: str = "starting"
    default_model: str | None = None

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
