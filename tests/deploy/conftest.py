"""Helpers for the deployment tests: load a deploy/ entry point the way its platform does."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import structlog
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# The real embedded model, as small as it runs: one thread, a 512-token window.
SERVERLESS_ENV = {
    "N_THREADS": "1",
    "N_CTX": "512",
    "LOG_LEVEL": "warning",
    "LOG_JSON": "false",
}


def load_entry_point(path: Path, name: str, env: dict[str, str]) -> ModuleType:
    """Import a platform entry point (function_app.py, handler.py) under `env`, with its
    folder on sys.path, as the platform's worker imports it."""
    values = {
        **SERVERLESS_ENV,
        "DATA_DIR": tempfile.mkdtemp(prefix="genai-deploy-data-"),
        **env,
    }
    environ = os.environ.copy()
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in values.items():
                mp.setenv(key, value)
            mp.syspath_prepend(str(path.parent))
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec and spec.loader
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            logging_config = structlog.get_config()
            try:
                spec.loader.exec_module(module)
            finally:
                # The entry point configures structlog for its platform; later tests get theirs.
                structlog.configure(**logging_config)
    finally:
        # The entry point sets its platform defaults (ENGINE_PROCESS, MODEL_CACHE_DIR, ...) with
        # os.environ.setdefault: they must not leak into the tests that run after it.
        os.environ.clear()
        os.environ.update(environ)
    return module


def engines(module: ModuleType) -> list[Any]:
    return list(module.fastapi_app.state.service.all_models())


def close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left on a worker loop (sse-starlette's watchers), then close it."""
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()


class CfnLoader(yaml.SafeLoader):
    """YAML loader that reads CloudFormation short-form tags (!Ref, !Sub, ...) as plain values."""


CfnLoader.add_multi_constructor(
    "!",
    lambda loader, suffix, node: (
        loader.construct_scalar(node)
        if isinstance(node, yaml.ScalarNode)
        else loader.construct_sequence(node)
        if isinstance(node, yaml.SequenceNode)
        else loader.construct_mapping(node)
    ),
)


def tool(name: str) -> str:
    """A command-line tool from the venv (dev extra) or PATH."""
    found = shutil.which(name, path=str(ROOT / ".venv/bin")) or shutil.which(name)
    assert found, f"{name} is not installed (it is in the dev extra)"
    return found
