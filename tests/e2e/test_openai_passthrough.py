"""`/v1` as a faithful pass-through (issue #26), driven by the OpenAI Python SDK.

What reaches the model is read back from the fake upstream (`fake.requests`):
a stateless call's `messages` as sent, the client's own options as sent, and
nothing chatstream would add of its own (built-in tools, a default
`max_tokens`). Client tools end the run with `finish_reason: "tool_calls"`;
they are never run server-side.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.support.servers import AppServer

SESSION = "x-chatstream-session-id"
MESSAGE = "x-chatstream-message-id"


@pytest.fixture
def client(server: AppServer) -> Iterator[openai.OpenAI]:
    sdk = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    yield sdk
    sdk.close()


# --- (5) models and unknown paths --------------------------------------------------


def test_a_model_is_retrieved_by_id_and_an_unknown_one_is_not_found(
    client: openai.OpenAI,
) -> None:
    model = client.models.retrieve("test-model")
    assert (model.id, model.object, model.owned_by) == ("test-model", "model", "chatstream")
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("gpt-nothing")
    assert raised.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("POST", "/v1/responses", 404, None),
        ("GET", "/v1/embeddings", 404, None),
        ("DELETE", "/v1/models/test-model", 405, "GET"),
        ("GET", "/v1/chat/completions", 405, "POST"),
    ],
)
def test_an_unknown_path_or_method_answers_openais_error_shape(
    server: AppServer, method: str, path: str, status: int, allow: str | None
) -> None:
    response = httpx.request(method, f"{server.base_url}{path}", json={}, timeout=10)
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "code", "param"}
    assert body["error"]["type"] == "invalid_request_error"
    assert path in body["error"]["message"]
    assert response.headers.get("allow") == allow
