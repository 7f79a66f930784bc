"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import MODEL_ID


def test_list_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list().data]
    assert MODEL_ID in ids


def test_retrieve_model_by_id_and_alias(client: openai.OpenAI) -> None:
    model = client.models.retrieve(MODEL_ID)
    assert model.id == MODEL_ID
    assert model.object == "model"
    assert model.owned_by
    # The spec the service was started with works as an alias.
    assert client.models.retrieve("smollm2").id == MODEL_ID


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-nonexistent")
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="gpt-nonexistent", messages=[{"role": "user", "content": "hi"}]
        )
