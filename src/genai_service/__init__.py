"""genai-service: an OpenAI-compatible generative-AI service and its deployment kit."""

__version__ = "0.1.0"
