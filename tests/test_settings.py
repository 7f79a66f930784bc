"""Settings from the environment, a .env file and /run/secrets-style files."""

from __future__ import annotations

from pathlib import Path

import pytest

from genai_service.settings import (
    BuildEnv,
    Settings,
    SettingsError,
    load_settings,
    normalize_database_url,
)


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


@pytest.mark.parametrize("value", ["", "relative/dir"])
def test_empty_or_relative_xdg_dirs_fall_back_to_the_home_defaults(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The XDG base directory spec: empty (or relative) means unset, never the working directory.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", value)
    monkeypatch.setenv("XDG_CACHE_HOME", value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.data_dir == tmp_path / "home" / ".local" / "share" / "genai-service"
    assert settings.model_cache_dir == tmp_path / "home" / ".cache" / "genai-service" / "models"


def test_xdg_dirs_are_used_when_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.data_dir == tmp_path / "data" / "genai-service"
    assert settings.model_cache_dir == tmp_path / "cache" / "genai-service" / "models"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite+pysqlite:////abs/x.db", "sqlite+aiosqlite:////abs/x.db"),
        ("postgres://u:p@h/db", "postgresql+asyncpg://u:p@h/db"),
        ("postgresql+psycopg://u:p@h/db", "postgresql+asyncpg://u:p@h/db"),
        (" sqlite+aiosqlite:///x.db ", "sqlite+aiosqlite:///x.db"),
    ],
)
def test_database_url_sync_spellings_get_the_async_driver(url: str, expected: str) -> None:
    assert normalize_database_url(url) == expected
    assert Settings(_env_file=None, database_url=url).database_url == expected  # type: ignore[call-arg]


def test_a_foreign_database_url_names_the_forms_but_not_the_password() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None, database_url="mysql://u:s3cret@h/db")
    (line,) = caught.value.lines
    assert line.startswith("invalid setting DATABASE_URL:")
    assert "postgresql+asyncpg://" in line and "sqlite+aiosqlite://" in line
    assert "s3cret" not in line


def test_the_engine_explains_a_sync_url() -> None:
    from genai_service.storage.database import make_engine

    with pytest.raises(ValueError, match=r"use 'sqlite\+aiosqlite://'"):
        make_engine("sqlite:///x.db")


def test_each_bad_variable_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "abc")
    monkeypatch.setenv("N_CTX", "1")
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None)
    assert sorted(line.split(":")[0] for line in caught.value.lines) == [
        "invalid setting N_CTX",
        "invalid setting PORT",
    ]
    assert any("(got 'abc')" in line for line in caught.value.lines)


def test_a_list_that_is_not_json_says_both_forms_and_hides_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("API_KEYS", "[sk-secret-1")
    monkeypatch.setenv("ALLOWED_CORS_ORIGINS", '["http://a.example"')
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None)
    lines = sorted(caught.value.lines)
    assert [line.split(":")[0] for line in lines] == [
        "invalid setting ALLOWED_CORS_ORIGINS",
        "invalid setting API_KEYS",
    ]
    assert all("expected a,b,c or a JSON list" in line for line in lines), lines
    assert "sk-secret-1" not in " ".join(lines)


def test_database_password_file_goes_into_the_url(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("p@ss/word:1\n")  # as `echo > file` writes it; URL-special characters
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url="postgresql://genai@db:5432/genai",
        database_password_file=secret,
    )
    from sqlalchemy.engine import make_url

    url = make_url(settings.resolved_database_url)
    assert url.password == "p@ss/word:1" and url.host == "db" and url.username == "genai"
    assert "p@ss" not in url.render_as_string(hide_password=True)


def test_an_unreadable_password_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(
            _env_file=None,
            database_url="postgresql://genai@db/genai",
            database_password_file=tmp_path / "missing",
        )
    (line,) = caught.value.lines
    assert line.startswith("invalid setting DATABASE_PASSWORD_FILE: cannot read")


def test_log_level_is_one_of_uvicorns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", " WARNING ")
    assert Settings(_env_file=None).log_level == "warning"  # type: ignore[call-arg]
    monkeypatch.setenv("LOG_LEVEL", "loud")
    with pytest.raises(SettingsError, match="LOG_LEVEL: expected one of critical"):
        load_settings(_env_file=None)


def test_env_example_is_safe_for_a_local_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """`cp .env.example .env` (the Compose step) must not break a local `make serve`."""
    example = Path(__file__).parents[1] / ".env.example"
    for name in ("MODEL", "PORT", "API_KEYS", "LOG_JSON", "POSTGRES_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=example)  # type: ignore[call-arg]
    assert settings.model == "smollm2"
    assert settings.api_keys == []
    assert "POSTGRES_PASSWORD=" not in example.read_text()  # a file secret, or generated


def test_the_database_password_stays_out_of_repr(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, database_url="postgresql://u:s3cret@h/db")  # type: ignore[call-arg]
    assert "s3cret" not in repr(settings)
