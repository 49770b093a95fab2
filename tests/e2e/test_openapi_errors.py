"""OpenAPI documents every error as the `{"error": …}` body the server really sends."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.support.sentinels import SENTINEL_JWT_SECRET, make_token
from tests.support.servers import AppServer

ERROR_REF = "#/components/schemas/ErrorBody"
OPENAI_ERROR_REF = "#/components/schemas/OpenAIErrorBody"


@pytest.fixture
def jwt_server(make_server: Callable[..., AppServer]) -> AppServer:
    return make_server(auth="jwt", jwt_secret=SENTINEL_JWT_SECRET)


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, methods in spec["paths"].items()
        for method, operation in methods.items()
    ]


def test_every_error_response_is_documented_as_the_error_body(jwt_server: AppServer) -> None:
    spec = httpx.get(f"{jwt_server.base_url}/openapi.json", timeout=10).json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert '"detail"' not in str(spec["components"]["schemas"]).replace("'", '"')
    for method, path, operation in operations(spec):
        for status, response in operation["responses"].items():
            if status[0] in "45" and path != "/readyz":
                schema = response["content"]["application/json"]["schema"]
                # The OpenAI facade speaks OpenAI's error shape (contract, section 9).
                expected = OPENAI_ERROR_REF if path.startswith("/v1/") else ERROR_REF
                assert schema == {"$ref": expected}, (method, path, status)


def test_every_protected_endpoint_documents_and_answers_401(jwt_server: AppServer) -> None:
    spec = httpx.get(f"{jwt_server.base_url}/openapi.json", timeout=10).json()
    protected = [(m, p, op) for m, p, op in operations(spec) if p.startswith("/api/")]
    assert len(protected) >= 12
    expired = make_token("alice", exp=int(time.time()) - 5)
    with httpx.Client(base_url=jwt_server.base_url, timeout=10) as client:
        for method, path, operation in protected:
            assert operation.get("security"), (method, path)
            assert "401" in operation["responses"], (method, path)
            url = path.format(session_id=uuid.uuid4(), message_id=uuid.uuid4(), chat_id="c")
            body = {"message": "hi"} if method == "POST" else None
            answer = client.request(
                method, url, json=body, headers={"Authorization": f"Bearer {expired}"}
            )
            assert answer.status_code == 401, (method, path, answer.text)
            assert answer.json()["error"]["code"] == "token_expired"
            assert answer.headers["www-authenticate"] == (
                'Bearer error="invalid_token", error_description="The token has expired"'
            )
