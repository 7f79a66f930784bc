"""Settings from the environment, a .env file and /run/secrets-style files."""

from __future__ import annotations

from pathlib import Path

import pytest

from genai_service.settings import BuildEnv, Settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.model == "smollm2"
    assert settings.engine == "llama.cpp"
    assert settings.build_env is BuildEnv.DEV and settings.docs_enabled
    assert settings.api_keys == [] and settings.allowed_cors_origins == []
    assert settings.resolved_database_url.startswith("sqlite+aiosqlite:///")


def test_environment_and_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL", "/models/x.gguf")
    monkeypatch.setenv("BUILD_ENV", "prod")
    monkeypatch.setenv("ALLOWED_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("API_KEYS", '["k1", "k2"]')
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://u:p@db/genai")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.model == "/models/x.gguf"
    assert settings.build_env is BuildEnv.PROD and not settings.docs_enabled
    assert settings.allowed_cors_origins == ["https://a.example", "https://b.example"]
    assert settings.api_key_values == (b"k1", b"k2")
    assert settings.resolved_database_url == "postgresql+asyncpg://u:p@db/genai"


def test_dotenv_file_and_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("N_CTX=1024\nSHOW_DOCS_IN_PRODUCTION=true\nBUILD_ENV=PROD\n")
    monkeypatch.setenv("N_CTX", "2048")
    settings = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert settings.n_ctx == 2048  # the environment wins over .env
    assert settings.docs_enabled


def test_secret_files(tmp_path: Path) -> None:
    (tmp_path / "openai_api_token").write_text("sk-upstream\n")
    settings = Settings(_env_file=None, _secrets_dir=tmp_path)  # type: ignore[call-arg]
    assert settings.openai_api_token is not None
    assert settings.openai_api_token.get_secret_value() == "sk-upstream"
    assert "sk-upstream" not in repr(settings)


def test_invalid_values_are_refused() -> None:
    with pytest.raises(ValueError):
        Settings(_env_file=None, n_ctx=1)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        Settings(_env_file=None, build_env="STAGING")  # type: ignore[call-arg]
