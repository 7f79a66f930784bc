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


def test_the_query_form_honours_every_field(server: RunningServer) -> None:
    fields = {"prompt": "Count from 1 to 20.", "max_tokens": 3, "temperature": 0, "seed": 1}
    with server.http() as http:
        query = http.post("/generate/text", params=fields)
        body = http.post("/generate/text", json=fields)
        stopped = http.post("/generate/text", params={**fields, "max_tokens": 40, "stop": ["3"]})
        bad = http.post("/generate/text", params={**fields, "max_tokens": 0})
    assert query.status_code == 200
    assert query.json()["usage"]["completion_tokens"] == 3
    assert query.json()["finish_reason"] == "length"
    assert query.json()["text"] == body.json()["text"]  # the same request either way
    assert stopped.json()["finish_reason"] == "stop" and "3" not in stopped.json()["text"]
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
