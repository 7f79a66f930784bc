"""POST /generate/text, the simple endpoint."""

from __future__ import annotations

from tests.conftest import MODEL_ID, RunningServer


def test_generate_from_json(server: RunningServer) -> None:
    with server.http() as http:
        response = http.post(
            "/generate/text", json={"prompt": "Say hello.", "max_tokens": 12, "temperature": 0}
        )
    assert response.status_code == 200
    body = response.json()
    assert body["text"].strip()
    assert body["model"] == MODEL_ID
    assert body["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_generate_from_query(server: RunningServer) -> None:
    with server.http() as http:
        response = http.post("/generate/text", params={"prompt": "Name a fruit."})
    assert response.status_code == 200
    assert response.json()["text"].strip()


def test_generate_without_prompt_is_400(server: RunningServer) -> None:
    with server.http() as http:
        response = http.post("/generate/text")
        empty = http.post("/generate/text", json={"prompt": ""})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt"
    assert empty.status_code == 400
