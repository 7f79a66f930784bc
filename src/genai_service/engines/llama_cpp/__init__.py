"""The llama.cpp engine: `client` (the API process side), `core` (weights, context and the
scheduler, in the engine process by default) and `scheduler` (continuous batching)."""

from genai_service.engines.llama_cpp.client import FALLBACK_TEMPLATE, LlamaCppEngine

__all__ = ["FALLBACK_TEMPLATE", "LlamaCppEngine"]
