"""Upstream engine: any OpenAI-compatible server (OpenAI, Azure OpenAI, vLLM, llama-server,
Ollama, or another genai-service) behind this service's API.

Chat turns are forwarded unrendered (the upstream applies its own template), streams are
passed through chunk by chunk, and a request that fails before its first byte with 429, a
5xx or a connection error is retried with exponential backoff (honouring `Retry-After`).
A background probe of the upstream's `/models` sets `unavailable` while the upstream is down,
so readiness (and requests: a quick 503 instead of 502 after retries) follow its health.
Azure OpenAI works through its OpenAI-compatible `/openai/v1` base URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import structlog
from opentelemetry import propagate

from genai_service.engines.base import (
    Cancellation,
    ChatMessage,
    EngineHTTPError,
    GenerationChunk,
    ModelInfo,
    Prompt,
    SamplingParams,
)
from genai_service.settings import ModelSpec, Settings

log = structlog.get_logger(__name__)

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class UpstreamEngine:
    engine_name = "upstream"
    warmup = False  # load() already checked the server; a warm-up would spend real tokens

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        model_id: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        health_interval: float = 5.0,
        context_length: int = 131072,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.max_retries = max_retries
        self.backoff = backoff
        self.timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self.health_interval = health_interval
        # A probe is one quick GET: a slow answer counts as down, like a load balancer's check.
        self._probe_timeout = httpx.Timeout(min(connect_timeout, 5.0))
        self.info = ModelInfo(
            id=model_id or model,
            engine=self.engine_name,
            context_length=context_length,
            owned_by="upstream",
            path=self.base_url,
        )
        self.active = 0
        self.unavailable: str | None = None  # why the upstream cannot serve now
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._watcher: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------
    async def load(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=self.timeout, transport=self._transport
        )
        # Fail at start, not at the first user request, when the URL or the key is wrong (a
        # 4xx: permanent). An upstream that is down or busy is not: readiness waits for it.
        self.unavailable = await self._probe(fail_on_client_error=True)
        if self.unavailable:
            log.warning("upstream_unavailable", url=self.base_url, reason=self.unavailable)
        self._watcher = asyncio.create_task(self._watch())

    async def _probe(self, fail_on_client_error: bool = False) -> str | None:
        """Why the upstream cannot serve now, from one GET /models; None when it answers 2xx."""
        assert self._client is not None
        try:
            response = await self._client.get("/models", timeout=self._probe_timeout)
        except httpx.HTTPError as exc:
            return f"the upstream model server {self.base_url} does not answer ({exc!r})"
        if response.status_code < 400:
            return None
        error = _http_error(response)
        if fail_on_client_error and response.status_code < 500 and response.status_code != 429:
            raise error
        return error.message

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            trouble = await self._probe()
            if trouble and not self.unavailable:
                log.warning("upstream_unavailable", url=self.base_url, reason=trouble)
            elif self.unavailable and not trouble:
                log.info("upstream_available", url=self.base_url)
            self.unavailable = trouble

    async def close(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # --- prompts (the upstream tokenizes; token counts come back in its usage) ------------
    async def tokenize(self, text: str) -> list[int]:
        return []

    async def text_prompt(self, text: str) -> Prompt:
        return Prompt(text=text, token_ids=[])

    async def chat_prompt(self, messages: Sequence[ChatMessage]) -> Prompt:
        text = "\n".join(f"{m.role}: {m.content}" for m in messages)
        return Prompt(text=text, token_ids=[], messages=tuple(messages))

    # --- HTTP ------------------------------------------------------------------------------
    async def _send(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send with retries; returns an open streaming response with a 2xx status."""
        if self._client is None:
            raise RuntimeError("engine is not loaded")
        attempt = 0
        while True:
            # W3C traceparent of the current generation span: the provider's trace joins ours.
            trace_headers: dict[str, str] = {}
            propagate.inject(trace_headers)
            request = self._client.build_request(method, path, json=body, headers=trace_headers)
            try:
                response = await self._client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadTimeout) as exc:
                if attempt >= self.max_retries:
                    raise EngineHTTPError(
                        502, f"The upstream model server did not answer: {exc!r}.", "upstream_error"
                    ) from exc
                delay = self._delay(attempt, None)
            else:
                if response.status_code < 400:
                    return response
                await response.aread()
                retry = response.status_code in RETRY_STATUS and attempt < self.max_retries
                if not retry:
                    raise _http_error(response)
                delay = self._delay(attempt, response.headers.get("retry-after"))
                await response.aclose()
            log.warning("upstream_retry", path=path, attempt=attempt + 1, delay=round(delay, 2))
            await asyncio.sleep(delay)
            attempt += 1

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), 30.0)
            except ValueError:
                pass
        # Exponential backoff with jitter, so many replicas do not retry in lockstep.
        return float(self.backoff * (2**attempt) * (0.5 + random.random()))

    # --- generation ------------------------------------------------------------------------
    async def stream(
        self, prompt: Prompt, params: SamplingParams, cancel: Cancellation | None = None
    ) -> AsyncIterator[GenerationChunk]:
        cancel = cancel or Cancellation()
        chat = prompt.messages is not None
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if chat:
            assert prompt.messages is not None
            body["messages"] = [{"role": m.role, "content": m.content} for m in prompt.messages]
        else:
            body["prompt"] = prompt.text
        self.active += 1
        try:
            response = await self._send(
                "POST", "/chat/completions" if chat else "/completions", body
            )
            finish: str | None = None
            usage: dict[str, Any] = {}
            try:
                async for line in response.aiter_lines():
                    if cancel.cancelled:
                        return
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event:
                        raise EngineHTTPError(
                            502, str(event["error"].get("message", event)), "upstream_error"
                        )
                    usage = event.get("usage") or usage
                    for choice in event.get("choices") or []:
                        text = (
                            (choice.get("delta") or {}).get("content")
                            if chat
                            else choice.get("text")
                        )
                        if text:
                            yield GenerationChunk(text=text)
                        finish = choice.get("finish_reason") or finish
            finally:
                await response.aclose()
            yield GenerationChunk(
                text="",
                finish_reason="length" if finish == "length" else "stop",
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
            )
        finally:
            self.active -= 1

    # --- embeddings ------------------------------------------------------------------------
    async def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        response = await self._send(
            "POST", "/embeddings", {"model": self.model, "input": list(texts)}
        )
        try:
            payload = json.loads(await response.aread())
        finally:
            await response.aclose()
        data = sorted(payload["data"], key=lambda item: item["index"])
        usage = payload.get("usage") or {}
        return [item["embedding"] for item in data], int(usage.get("prompt_tokens", 0))


def _http_error(response: httpx.Response) -> EngineHTTPError:
    """Pass 4xx through as they are (the client's fault); other failures become 502."""
    try:
        error = response.json().get("error") or {}
        message = str(error.get("message") or response.text)
        code = error.get("code")
    except (ValueError, AttributeError):
        message, code = response.text[:500], None
    if 400 <= response.status_code < 500 and response.status_code not in (401, 403, 429):
        return EngineHTTPError(response.status_code, message, code)
    # A bad upstream key or an exhausted upstream is the server's problem, not the client's.
    return EngineHTTPError(
        502, f"The upstream model server answered {response.status_code}: {message}", code
    )


def from_spec(spec: ModelSpec, settings: Settings) -> UpstreamEngine:
    """The registry's factory (engines/registry.py)."""
    base_url = spec.base_url or settings.upstream_base_url
    if not base_url:
        raise ValueError("the upstream engine needs UPSTREAM_BASE_URL (or base_url)")
    token = settings.openai_api_token
    return UpstreamEngine(
        base_url,
        spec.model,
        model_id=spec.served_model_name,
        api_key=token.get_secret_value() if token else None,
        timeout=settings.upstream_timeout,
        max_retries=settings.upstream_max_retries,
        health_interval=settings.upstream_health_interval,
    )
