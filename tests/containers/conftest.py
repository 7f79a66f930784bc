"""Fixtures for the container tests: a Docker engine, local base images, the built images.

Everything is real: the repository's Dockerfile is built (only build arguments differ from a
plain `docker build .`) and its containers run. Without Docker the tests skip and say why;
under GENAI_STRICT=1 (CI) a skip is a failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from . import dockerkit

PROD_TAG = "genai-test/genai-service:prod"


@pytest.fixture(scope="session")
def docker_engine() -> None:
    dockerkit.require_engine()


@pytest.fixture(scope="session")
def build_args(docker_engine: None) -> dict[str, str]:
    """Local base image (debootstrap) and the host's llama-cpp-python wheel, built once."""
    return dockerkit.local_build_args()


@pytest.fixture(scope="session")
def production_image(build_args: dict[str, str]) -> str:
    dockerkit.build(dockerkit.ROOT, PROD_TAG, target="production", build_args=build_args)
    return PROD_TAG


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return dockerkit.models_dir()


@pytest.fixture
def container_names() -> Iterator[list[str]]:
    """Containers a test starts; removed afterwards whatever happens."""
    names: list[str] = []
    yield names
    for name in names:
        dockerkit.docker("rm", "-f", "-v", name, check=False)
