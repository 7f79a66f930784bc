"""POST /tokenize and /detokenize with the real SmolLM2 tokenizer."""

from __future__ import annotations

from tests.conftest import MODEL_ID, RunningServer


def test_tokenize_round_trip_and_chat_count(server: RunningServer) -> None:
    with server.http() as http:
        tokens = http.post("/tokenize", json={"prompt": "Hello, world!"}).json()
        assert tokens["count"] == len(tokens["tokens"]) > 0
        assert tokens["max_model_len"] == server.state.engines[MODEL_ID].info.context_length
        text = http.post("/detokenize", json={"tokens": tokens["tokens"]}).json()["prompt"]
        assert text.endswith("Hello, world!")
        # Messages count exactly as a chat request's prompt does.
        messages = [{"role": "user", "content": "Say hi."}]
        counted = http.post("/tokenize", json={"model": MODEL_ID, "messages": messages}).json()
        chat = http.post(
            "/v1/chat/completions",
            json={"model": MODEL_ID, "messages": messages, "max_tokens": 1},
        ).json()
        assert counted["count"] == chat["usage"]["prompt_tokens"]


def test_bad_tokenizer_input_is_400(server: RunningServer) -> None:
    with server.http() as http:
        outside = http.post("/detokenize", json={"tokens": [1, 10_000_000]})
        assert outside.status_code == 400 and outside.json()["error"]["param"] == "tokens"
        negative = http.post("/detokenize", json={"tokens": [-1]})
        assert negative.status_code == 400
        both = http.post("/tokenize", json={"prompt": "a", "messages": []})
        assert both.status_code == 400
