"""The registry flow of scripts/registry-push.sh against a real registry on loopback.

The registry is Debian's `docker-registry` (the distribution project's registry), on a free
loopback port with its storage in a temporary folder (Docker treats 127.0.0.0/8 registries as
insecure, plain HTTP, by default). The image is the production image of `tests/containers`:
the script's build reuses the fixture's layers, so nothing is built twice.

1. The script tags version, sha-<commit> and cache, pushes, and prints the digest.
2. The local tags are removed, the image is pulled by digest and run: it serves chat.
3. A second Docker engine with its own data root (an empty build cache, as on a new machine)
   builds the same Dockerfile with `--cache-from REGISTRY/genai-service:cache`: every step comes
   from the registry's layers; the test prints how long that took.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from . import dockerkit
from .test_images import published_url, run_service

REGISTRY_BIN = "/usr/bin/docker-registry"
SCRIPT = dockerkit.ROOT / "scripts/registry-push.sh"
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
    ]
)


@dataclass
class Registry:
    host: str

    def url(self, path: str) -> str:
        return f"http://{self.host}/v2/{path}"

    def digest(self, repository: str, tag: str) -> str:
        response = httpx.head(
            self.url(f"{repository}/manifests/{tag}"), headers={"Accept": MANIFEST_TYPES}
        )
        response.raise_for_status()
        return response.headers["Docker-Content-Digest"]


@pytest.fixture(scope="module")
def registry(docker_engine: None) -> Iterator[Registry]:
    if not Path(REGISTRY_BIN).exists():
        pytest.skip("Debian's docker-registry is not installed (.ci/run installs it)")
    port = dockerkit.free_port()
    with tempfile.TemporaryDirectory(prefix="genai-registry-") as tmp:
        config = Path(tmp, "config.yml")
        config.write_text(
            "version: 0.1\n"
            "log: {level: warn}\n"
            f"storage: {{filesystem: {{rootdirectory: {tmp}/storage}}, delete: {{enabled: true}}}}\n"
            f'http: {{addr: "127.0.0.1:{port}"}}\n'
        )
        proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=open(Path(tmp, "registry.log"), "wb"),  # noqa: SIM115
        )
        try:
            dockerkit.wait_http(f"http://127.0.0.1:{port}/v2/", timeout=30)
            yield Registry(f"127.0.0.1:{port}")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def script_build_options(build_args: dict[str, str]) -> list[str]:
    """The production target with the local base images, as `tests/containers` builds it."""
    options = ["--progress=plain", "--target", "production", *dockerkit.build_args_common()]
    for key, value in build_args.items():
        options += ["--build-arg", f"{key}={value}"]
    return options


@dataclass
class Pushed:
    repository: str
    digest_ref: str
    tags: list[str]


@pytest.fixture(scope="module")
def pushed(
    registry: Registry, production_image: str, build_args: dict[str, str]
) -> Iterator[Pushed]:
    repository = f"{registry.host}/genai-service"
    result = subprocess.run(
        [str(SCRIPT), repository, *script_build_options(build_args)],
        cwd=dockerkit.ROOT,
        env={**os.environ, "DOCKER": dockerkit.DOCKER, "ALLOW_DIRTY": "1"},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    digest_ref = result.stdout.strip().splitlines()[-1]
    version = dockerkit.docker(
        "image", "inspect", "--format",
        '{{index .Config.Labels "org.opencontainers.image.version"}}', f"{repository}:cache",
    ).stdout.strip()  # fmt: skip
    sha = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"],
        cwd=dockerkit.ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    tags = [version, f"sha-{sha}", "cache"]
    yield Pushed(repository, digest_ref, tags)
    for ref in (*(f"{repository}:{tag}" for tag in tags), digest_ref):
        dockerkit.docker("rmi", ref, check=False)  # this run's registry is gone: so are its names


def test_push_tags_version_and_commit_and_prints_the_digest(
    registry: Registry, pushed: Pushed
) -> None:
    assert re.fullmatch(rf"{re.escape(pushed.repository)}@sha256:[0-9a-f]{{64}}", pushed.digest_ref)
    tags = httpx.get(registry.url("genai-service/tags/list")).json()["tags"]
    assert sorted(tags) == sorted(pushed.tags)
    digest = pushed.digest_ref.split("@")[1]
    # The version, the commit and the cache tag name one and the same image.
    for tag in pushed.tags:
        assert registry.digest("genai-service", tag) == digest, tag
    # Pushing the same version again is refused: a version tag names one image forever.
    again = subprocess.run(
        [str(SCRIPT), pushed.repository],
        cwd=dockerkit.ROOT,
        env={**os.environ, "DOCKER": dockerkit.DOCKER, "ALLOW_DIRTY": "1"},
        capture_output=True,
        text=True,
    )
    assert again.returncode == 1 and "already pushed" in again.stderr


def test_pull_by_digest_after_removing_the_local_image_then_run(
    pushed: Pushed, models_dir: Path, container_names: list[str]
) -> None:
    for tag in pushed.tags:
        dockerkit.docker("rmi", f"{pushed.repository}:{tag}")
    gone = dockerkit.docker("image", "inspect", pushed.digest_ref, check=False)
    assert gone.returncode != 0  # no local image answers to the digest any more

    dockerkit.docker("pull", pushed.digest_ref, timeout=600)
    name = run_service(pushed.digest_ref, models_dir, container_names)
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


@pytest.fixture
def empty_engine(docker_engine: None) -> Iterator[str]:
    """A second dockerd: its own data root, containerd, socket and bridge, so no image and no
    build cache. Its socket path stays short (a Unix socket path has ~100 bytes).

    Not `--bridge=none`: a dockerd without a bridge deletes the host's docker0, the first
    engine's. It gets a bridge of its own instead, removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="gr-", dir="/tmp"))
    bridge = f"gr{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    sock = f"unix://{root}/docker.sock"
    log = open(root / "dockerd.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            "/usr/sbin/dockerd",
            f"--data-root={root}/data",
            f"--exec-root={root}/x",
            f"--pidfile={root}/docker.pid",
            f"--host={sock}",
            f"--bridge={bridge}",
            "--iptables=false",
            "--ip6tables=false",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while dockerkit.docker("-H", sock, "info", check=False).returncode != 0:
            assert proc.poll() is None, (root / "dockerd.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the second dockerd did not come up"
            time.sleep(0.2)
        yield sock
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
        subprocess.run(["ip", "link", "del", bridge], check=False)
        shutil.rmtree(root, ignore_errors=True)


def test_a_new_machine_builds_from_the_registry_cache(
    pushed: Pushed, build_args: dict[str, str], empty_engine: str
) -> None:
    other = ("-H", empty_engine)
    assert dockerkit.docker(*other, "images", "-q").stdout.strip() == ""
    # The base images a new machine pulls from its usual registry (here: from the first engine).
    bases = sorted(set(build_args.values()))
    save = subprocess.Popen([dockerkit.DOCKER, "save", *bases], stdout=subprocess.PIPE)
    subprocess.run(
        [dockerkit.DOCKER, *other, "load", "-q"], stdin=save.stdout, check=True, capture_output=True
    )
    assert save.wait() == 0

    started = time.monotonic()
    build = dockerkit.docker(
        *other, "build", *script_build_options(build_args),
        "--build-arg", "BUILDKIT_INLINE_CACHE=1",
        "--cache-from", f"{pushed.repository}:cache", "-t", "genai-test/from-registry",
        str(dockerkit.ROOT), timeout=1800,
    )  # fmt: skip
    seconds = time.monotonic() - started
    log = build.stdout + build.stderr
    # Every Dockerfile step came from the registry's layers: none ran, nothing compiled.
    steps = {m.group(1): m.group(2) for m in re.finditer(r"^(#\d+) \[([^\]]+)\]", log, re.M)}
    ran = [
        name
        for step, name in steps.items()
        if not name.startswith(("internal", "wheels", "base 1/"))
        and not re.search(rf"^{step} CACHED$", log, re.M)
    ]
    assert not ran, log[-4000:]
    layers = dockerkit.docker(
        *other,
        "image",
        "inspect",
        "--format",
        "{{json .RootFS.Layers}}",
        "genai-test/from-registry",
    ).stdout
    dockerkit.docker("pull", "-q", pushed.digest_ref, timeout=600)  # a no-op after the pull test
    pulled = dockerkit.docker(
        "image", "inspect", "--format", "{{json .RootFS.Layers}}", pushed.digest_ref
    ).stdout
    assert layers == pulled  # the very layers of the pushed image
    print(f"\nbuild with an empty local cache and --cache-from the registry: {seconds:.1f} s")
