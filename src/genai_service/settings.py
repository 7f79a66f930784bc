"""Service settings: environment variables, a `.env` file and `/run/secrets/*` files.

Precedence (highest first): constructor arguments, environment, `.env`, secret files, defaults.
Secret files are named after the field (`/run/secrets/openai_api_token`, `/run/secrets/api_keys`),
which is how Docker and Compose mount secrets.
"""

from __future__ import annotations

import os
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL = "smollm2"
SECRETS_DIR = Path(os.environ.get("SECRETS_DIR", "/run/secrets"))


def _xdg_dir(variable: str, fallback: Path) -> Path:
    # The XDG base directory spec: an unset, empty or relative value means the default
    # (an empty XDG_DATA_HOME must not put the database under the working directory).
    value = os.environ.get(variable, "")
    return Path(value) if value and Path(value).is_absolute() else fallback


def _default_data_dir() -> Path:
    return _xdg_dir("XDG_DATA_HOME", Path.home() / ".local" / "share") / "genai-service"


def _default_cache_dir() -> Path:
    return _xdg_dir("XDG_CACHE_HOME", Path.home() / ".cache") / "genai-service" / "models"


DATABASE_URL_FORMS = (
    "postgresql+asyncpg://user:password@host:5432/db or sqlite+aiosqlite:///path/to/file.db"
)


def normalize_database_url(url: str) -> str:
    """The async-driver form of a database URL; ValueError (saying the forms) for others.

    The usual sync spellings (`postgres://` as Heroku writes it, `postgresql://`,
    `sqlite:///file.db`) name the same database: they get the async drivers the service uses.
    """
    url = url.strip()
    for prefix, driver in (
        ("postgres://", "postgresql+asyncpg://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgresql+psycopg2://", "postgresql+asyncpg://"),
        ("postgresql+psycopg://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
        ("sqlite+pysqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(prefix):
            url = driver + url[len(prefix) :]
    if not url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        scheme = url.split("://", 1)[0] if "://" in url else "no scheme"
        raise ValueError(f"expected {DATABASE_URL_FORMS}, not a '{scheme}://' URL")
    return url


LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


class BuildEnv(StrEnum):
    DEV = "DEV"
    PROD = "PROD"


def _split_csv(value: Any) -> Any:
    # Lists come from the environment as "a,b,c" (JSON lists are accepted too).
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            try:
                return json.loads(text)
            except json.JSONDecodeError:
                # One line that says the two accepted forms, never the (maybe secret) value.
                raise ValueError('expected a,b,c or a JSON list such as ["a", "b"]') from None
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


class ModelSpec(BaseModel):
    """One more model to serve beside MODEL (EXTRA_MODELS is a JSON list of these)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Spec for the engine: path, embedded name, or upstream id.")
    engine: str = "llama.cpp"
    kind: Literal["chat", "embedding"] = "chat"
    served_model_name: str | None = None
    base_url: str | None = Field(None, description="Upstream engine: the server's /v1 URL.")
    optional: bool = Field(
        False, description="Skip this model (with a warning) when it cannot be had here."
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        secrets_dir=str(SECRETS_DIR) if SECRETS_DIR.is_dir() else None,
        extra="ignore",
        case_sensitive=False,
    )

    # --- model and engine -------------------------------------------------------------------
    model: str = Field(
        DEFAULT_MODEL,
        description="Model to serve: `smollm2` (embedded default), a local GGUF path, "
        "or a Hugging Face `owner/repo/file.gguf` spec downloaded into MODEL_CACHE_DIR.",
    )
    served_model_name: str | None = Field(
        None, description="Model id clients use; defaults to the model file's name."
    )
    engine: str = Field(
        "llama.cpp",
        description="Inference engine: `llama.cpp`, `onnx`, `transformers` or `upstream`.",
    )
    model_cache_dir: Path = Field(
        default_factory=_default_cache_dir, description="Where downloaded models are kept."
    )
    hf_endpoint: str | None = Field(
        None, description="Hugging Face endpoint or mirror for downloads (HF_ENDPOINT)."
    )
    n_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads (default: the CPUs this process may use: affinity mask and cgroup "
        "CPU quota).",
    )
    n_ctx: int = Field(
        4096,
        ge=64,
        description="Context window of one request (per slot): its prompt plus reply.",
    )
    n_batch: int = Field(512, ge=1, description="Tokens decoded per batch step (at most).")
    n_gpu_layers: int = Field(
        0, ge=-1, description="Layers offloaded to the GPU (-1: all); needs the CUDA image."
    )
    # --- continuous batching ---
    n_parallel: int = Field(
        16,
        ge=1,
        description="Slots: sequences decoded together in one batch. They share one KV buffer "
        "(KV_CACHE_TOKENS), so an idle slot costs no memory.",
    )
    kv_cache_tokens: int | None = Field(
        None,
        ge=64,
        description="KV cache cells shared by all slots (llama.cpp; default N_PARALLEL x "
        "N_CTX, at most max(4 x N_CTX, 16384)). A "
        "request starts once its prompt plus max_tokens fits in the cells not promised to "
        "running requests.",
    )
    prefill_chunk: int = Field(
        256, ge=1, description="Prompt tokens prefilled per step while other requests decode."
    )
    prefix_cache: bool = Field(
        True,
        description="Each slot keeps the KV of its last prompt and reply; a prompt that starts "
        "the same way (a system prompt, a repeated question, a chat's next turn) reuses it.",
    )
    prompt_cache_mb: int = Field(
        1024,
        ge=0,
        description="RAM (MiB) for idle slots' prompts and replies (llama.cpp, as llama-server's "
        "--cache-ram): they leave the KV buffer, which keeps every step's attention short, and a "
        "prompt that starts the same way gets its cells back. 0: idle slots keep their cells.",
    )
    batch_invariant: bool = Field(
        False,
        description="Make each request's greedy output independent of what it is batched "
        "with (prompt steps under 63 tokens, two output rows per step); costs single-stream "
        "speed.",
    )
    stream_interval_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="Tokens of one stream generated within this many milliseconds go out as one "
        "chunk (the first at once); 0 sends each token as it comes. Fewer, larger chunks cost "
        "the API process less CPU per token (engine process only).",
    )
    direct_stream: bool = Field(
        True,
        description="The engine process writes a plain streamed chat's tokens straight to the "
        "client's socket (handed over by the API process): no API-process work per token. "
        "Used on uvicorn without TLS, for one choice without logprobs or tools (engine "
        "process only).",
    )
    engine_process: bool = Field(
        True,
        description="Run the llama.cpp engine in its own supervised process: a native crash "
        "fails the requests in flight, not the server, and the engine restarts by itself.",
    )
    max_concurrent_generations: int | None = Field(
        None, ge=1, description="Generations running at once (default: N_PARALLEL)."
    )
    max_queue: int = Field(
        16, ge=0, description="Requests waiting for a generation slot; past it, 429."
    )
    queue_timeout: float = Field(
        30.0, gt=0, description="Seconds a request may wait for a slot before 429."
    )
    max_request_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted; a larger one is answered 413 before it is read.",
    )
    max_messages: int = Field(
        256,
        ge=1,
        description="Most messages in one request (chat, responses input, tokenize); more is a 413.",
    )
    max_message_chars: int = Field(
        200_000,
        ge=1,
        description="Longest text of one message, prompt or input, in characters; longer is a 413.",
    )
    shutdown_drain_seconds: float = Field(
        25.0,
        ge=0,
        # SHUTDOWN_TIMEOUT is the same setting under the name the deployment docs use.
        validation_alias=AliasChoices("shutdown_drain_seconds", "shutdown_timeout"),
        description="On SIGTERM (alias SHUTDOWN_TIMEOUT), seconds the requests in flight may "
        "take to finish while new ones get 503; past it, running generations end with an "
        "error event. Keep it below the orchestrator's grace period.",
    )
    default_max_tokens: int = Field(
        512, ge=1, description="Reply length limit when a request sets none."
    )
    default_temperature: float = Field(
        0.2, ge=0, le=2, description="Temperature when a request sets none."
    )
    default_top_p: float = Field(0.95, gt=0, le=1, description="top_p when a request sets none.")
    warmup: bool = Field(True, description="Generate one token before reporting ready.")

    # --- more engines and models (ONNX, transformers, upstream; see engines/) -------------
    embedding_model: str = Field(
        "minilm",
        description="Embedding model for /v1/embeddings: `minilm` (all-MiniLM-L6-v2, "
        "embedded), an exported ONNX folder or a checkpoint folder; empty disables it.",
    )
    embedding_engine: str = Field("onnx", description="Engine of the embedding model.")
    onnx_precision: Literal["int8", "fp32"] = Field(
        "int8", description="Which ONNX weights to run when both exist."
    )
    device: str = Field(
        "auto", description="transformers engine: `auto` (cuda when present), `cuda`, `cpu`."
    )
    upstream_base_url: str | None = Field(
        None, description="Upstream engine: an OpenAI-compatible server's /v1 URL."
    )
    upstream_timeout: float = Field(60.0, gt=0, description="Upstream read timeout (s).")
    upstream_max_retries: int = Field(
        3, ge=0, description="Retries on 429, 5xx and connection errors, with backoff."
    )
    upstream_health_interval: float = Field(
        5.0,
        gt=0,
        description="How often (s) the upstream's /models is probed; readiness follows it.",
    )
    extra_models: list[ModelSpec] = Field(
        default_factory=list,
        description='More models, JSON: [{"model": "...", "engine": "...", "kind": '
        '"chat"|"embedding", "served_model_name": "...", "base_url": "..."}].',
    )

    # --- service ----------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    build_env: BuildEnv = BuildEnv.DEV
    show_docs_in_production: bool = False
    playground: bool | None = Field(
        None, description="The /playground page; unset: on, except when BUILD_ENV=PROD."
    )
    allowed_cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Keys accepted as `Authorization: Bearer <key>` (scope `user`). With "
        "no API_KEYS, ADMIN_API_KEYS or key in the database, authentication is off.",
    )
    admin_api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Keys with scope `admin`: key management (/v1/admin/keys), every key's "
        "usage, and /metrics when METRICS_REQUIRE_KEY is on.",
    )
    metrics_require_key: bool = Field(
        False, description="/metrics needs an admin key (when authentication is on)."
    )
    log_level: str = Field(
        "info", description="critical, error, warning, info, debug or trace (uvicorn's levels)."
    )
    log_json: bool = False

    # --- storage and upstream (used by the persistence and engine issues) --------------------
    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str | None = Field(
        None,
        repr=False,  # it may hold a password
        description="SQLAlchemy async URL; default: SQLite under DATA_DIR.",
    )
    database_password_file: Path | None = Field(
        None,
        description="File holding the database password, put into DATABASE_URL (which then "
        "needs none): a Compose or Kubernetes secret instead of a password in the environment.",
    )
    openai_api_token: SecretStr | None = Field(
        None, description="Key for an upstream OpenAI-compatible provider."
    )
    # --- persistence (storage/) ---------------------------------------------------------------
    db_pool_size: int = Field(5, ge=1, description="Connections kept open (Postgres).")
    db_max_overflow: int = Field(10, ge=0, description="Extra connections under load.")
    db_pool_timeout: float = Field(10.0, gt=0, description="Seconds to wait for a connection.")
    db_pool_recycle: int = Field(1800, ge=-1, description="Reopen connections after N s.")
    db_connect_timeout: float = Field(5.0, gt=0, description="Seconds to open a connection.")
    auto_migrate: bool | None = Field(
        None,
        description="Apply migrations at start-up. Default: yes for SQLite, no for Postgres "
        "(run `genai-service db upgrade` there).",
    )
    completions_without_database: bool = Field(
        True,
        description="Keep plain completions (chat, completions, /generate/text) serving "
        "while the database is down; their usage records wait in memory.",
    )

    @field_validator("allowed_cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("api_keys", "admin_api_keys", mode="before")
    @classmethod
    def _keys(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("database_url", mode="before")
    @classmethod
    def _database_url(cls, value: Any) -> Any:
        # Accept the usual sync spellings (Compose, Heroku-style `postgres://`) and use the
        # async drivers the service runs on.
        if not isinstance(value, str) or not value.strip():
            return None if isinstance(value, str) else value
        return normalize_database_url(value)

    @field_validator("database_password_file")
    @classmethod
    def _password_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                value.read_bytes()
            except OSError as exc:
                raise ValueError(f"cannot read {value}: {exc.strerror or exc}") from None
        return value

    @model_validator(mode="after")
    def _password_into_url(self) -> Settings:
        if self.database_password_file is not None and self.database_url:
            from sqlalchemy.engine import make_url

            url = make_url(self.database_url)
            if url.get_backend_name() != "sqlite":
                password = self.database_password_file.read_text().rstrip("\r\n")
                self.database_url = url.set(password=password).render_as_string(hide_password=False)
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            if value not in LOG_LEVELS:
                raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
        return value

    @field_validator("build_env", mode="before")
    @classmethod
    def _build_env(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @property
    def generation_slots(self) -> int:
        return self.max_concurrent_generations or self.n_parallel

    @property
    def docs_enabled(self) -> bool:
        return self.build_env is BuildEnv.DEV or self.show_docs_in_production

    @property
    def playground_enabled(self) -> bool:
        if self.playground is not None:
            return self.playground
        return self.build_env is not BuildEnv.PROD

    @cached_property
    def api_key_values(self) -> tuple[bytes, ...]:
        return tuple(k.get_secret_value().encode() for k in self.api_keys)

    @cached_property
    def admin_key_values(self) -> tuple[bytes, ...]:
        return tuple(k.get_secret_value().encode() for k in self.admin_api_keys)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'genai.db'}"

    @property
    def migrate_at_startup(self) -> bool:
        if self.auto_migrate is not None:
            return self.auto_migrate
        return self.resolved_database_url.startswith("sqlite")


# --- start-up errors: one line per setting, no traceback, never a secret ------------------------
# Settings whose values are never echoed back (a URL can hold a password).
SECRET_SETTINGS = frozenset({"api_keys", "admin_api_keys", "openai_api_token", "database_url"})


class SettingsError(Exception):
    """Settings that cannot be used; `lines` has one line per variable, naming it."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _describe(error: Any) -> str:
    loc = [str(part) for part in error.get("loc", ())]
    field = loc[0] if loc else "settings"
    name = field.upper() + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc[1:])
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if error.get("type") == "missing":
        message = "required"
    line = f"invalid setting {name}: {message}"
    value = error.get("input")
    if field not in SECRET_SETTINGS and isinstance(value, str | int | float) and loc[1:] == []:
        shown = str(value)
        line += f" (got {shown[:60]!r}{'...' if len(shown) > 60 else ''})"
    return line


def load_settings(**values: Any) -> Settings:
    """Settings(), with every failure turned into a SettingsError of one line per variable."""
    import re

    from pydantic import ValidationError
    from pydantic_settings import SettingsError as SourceError

    try:
        return Settings(**values)
    except ValidationError as exc:
        raise SettingsError([_describe(e) for e in exc.errors(include_url=False)]) from None
    except SourceError as exc:
        # A list or JSON setting pydantic-settings could not decode (EXTRA_MODELS='[oops').
        found = re.search(r'field "([^"]+)"', str(exc))
        name = found.group(1).upper() if found else "a setting"
        raise SettingsError(
            [f"invalid setting {name}: not valid JSON (see README, Settings)"]
        ) from None
