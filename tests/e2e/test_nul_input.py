"""NUL (U+0000) in any input is refused naming the field, on PostgreSQL, whose text cannot hold it.

SQLite stores a NUL; PostgreSQL refuses it (asyncpg raises), so before the
rule a NUL was a 500 there. Every test here runs the app on a real,
freshly migrated PostgreSQL database.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from alembic import command
from websockets.exceptions import ConnectionClosed

from chatstream.cli import alembic_config
from tests.support.sentinels import SENTINEL_JWT_SECRET, make_token
from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.services import fresh_postgres_database, service_url
from tests.support.ws import open_socket, recv, send

pytestmark = pytest.mark.postgres

NUL = "\x00"
RULE = "must not contain NUL (U+0000) characters; remove them"


@pytest.fixture(scope="module")
def postgres_database() -> Iterator[str]:
    with fresh_postgres_database(service_url("CHATSTREAM_TEST_POSTGRES_URL")) as url:
        command.upgrade(alembic_config(url), "head")  # type: ignore[arg-type]
        yield url


@pytest.fixture
def database_url(postgres_database: str) -> str:
    """Every server of this module runs on PostgreSQL."""
    return postgres_database


@pytest.fixture
def client(server: AppServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=20) as http:
        yield http


def session_ids(server: AppServer) -> set[uuid.UUID]:
    """Every session in the (module-wide) database: nothing is written by a refused request."""
    store = server.state.store
    page = server.call(lambda: store.list_sessions("anonymous", limit=200, cursor=None))
    return {row.id for row in page.items}


def refused(response: httpx.Response, loc: list[Any]) -> dict[str, Any]:
    """The 422 that names the field at `loc` and says what to do."""
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["details"] == [{"loc": loc, "msg": RULE, "type": "nul_character"}]
    field = ".".join(str(part) for part in loc[1:])
    assert error["message"] == f"The request is not valid: {field} {RULE}."
    return dict(error)


# --- the rule, as documented ----------------------------------------------------------------

# Read only in part, and what is read is checked as `message` (below): the AI SDK's
# earlier messages may carry anything without changing the answer.
UNREAD = {"UIMessage", "UIMessagePart"}
NO_NUL_RULE = {"pattern": "\\u0000"}


def text_nodes(schema: Any, components: dict[str, Any], seen: set[str]) -> Iterator[Any]:
    """Every string schema reachable from `schema`, but inside the UNREAD components."""
    if isinstance(schema, list):
        for item in schema:
            yield from text_nodes(item, components, seen)
        return
    if not isinstance(schema, dict):
        return
    reference = schema.get("$ref")
    if isinstance(reference, str):
        name = reference.rsplit("/", 1)[-1]
        if name not in seen and name not in UNREAD:
            seen.add(name)
            yield from text_nodes(components[name], components, seen)
        return
    if schema.get("type") == "string" and not {"format", "enum", "const"} & set(schema):
        yield schema
    for key in ("properties", "items", "anyOf", "oneOf", "allOf", "additionalProperties"):
        value = schema.get(key)
        if isinstance(value, dict) and key == "properties":
            value = list(value.values())
        yield from text_nodes(value, components, seen)


def test_every_text_field_of_every_request_documents_the_rule(client: httpx.Client) -> None:
    document = client.get("/openapi.json").json()
    components = document["components"]["schemas"]
    checked: list[str] = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            schemas = [
                parameter["schema"]
                for parameter in operation.get("parameters", [])
                if parameter["in"] in ("path", "query")
            ]
            body = operation.get("requestBody", {}).get("content", {})
            schemas += [content["schema"] for content in body.values()]
            for node in text_nodes(schemas, components, set()):
                pattern = node.get("pattern", "")
                anchored = pattern.startswith("^") and pattern.endswith("$")  # cursor, asset name
                assert node.get("not") == NO_NUL_RULE or anchored, (method, path, node)
                checked.append(f"{method} {path}")
    assert {"post /api/chat", "post /api/ui/chat", "post /v1/chat/completions"} <= set(checked)
    assert "get /api/ui/chat/{chat_id}/stream" in checked


# --- HTTP bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/chat/stream", "/api/chat"])
@pytest.mark.parametrize(
    ("field", "body"),
    [
        ("message", {"message": f"hel{NUL}lo"}),
        ("message", {"message": NUL}),
        ("system_prompt", {"message": "hi", "system_prompt": f"be{NUL}kind"}),
        ("client_message_id", {"message": "hi", "client_message_id": f"key{NUL}"}),
        ("model", {"message": "hi", "model": f"test-model{NUL}"}),
    ],
)
def test_a_nul_in_a_chat_body_is_422_naming_the_field(
    server: AppServer, client: httpx.Client, path: str, field: str, body: dict[str, Any]
) -> None:
    before = session_ids(server)
    refused(client.post(path, json=body), ["body", field])
    assert session_ids(server) == before


@pytest.mark.parametrize("field", ["title", "system_prompt", "model"])
def test_a_nul_in_a_session_body_is_422_naming_the_field(
    server: AppServer, client: httpx.Client, field: str
) -> None:
    refused(client.post("/api/sessions", json={field: f"x{NUL}y"}), ["body", field])
    created = client.post("/api/sessions", json={"title": "kept"}).json()
    response = client.patch(f"/api/sessions/{created['id']}", json={field: f"x{NUL}y"})
    refused(response, ["body", field])
    assert client.get(f"/api/sessions/{created['id']}").json()["title"] == "kept"


def test_a_nul_in_an_ai_sdk_chat_is_422_naming_the_field(
    server: AppServer, client: httpx.Client
) -> None:
    before = session_ids(server)
    message = {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}
    response = client.post("/api/ui/chat", json={"id": f"chat{NUL}", "messages": [message]})
    refused(response, ["body", "id"])
    nul_text = {**message, "parts": [{"type": "text", "text": f"h{NUL}i"}]}
    response = client.post("/api/ui/chat", json={"id": "chat", "messages": [nul_text]})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"] == [
        {"loc": ["body", "messages"], "msg": RULE, "type": "nul_character"}
    ]
    assert session_ids(server) == before


# --- paths and queries ---------------------------------------------------------------------


def test_a_nul_in_a_path_or_a_query_is_422_naming_it(client: httpx.Client) -> None:
    session_id = client.post("/api/sessions", json={"title": "t"}).json()["id"]
    chat_id = refused(client.get("/api/ui/chat/ab%00c/stream"), ["path", "chat_id"])
    assert "remove them" in chat_id["message"]
    cases = [
        ("GET", "/api/sessions/%00", ["path", "session_id"]),
        ("PATCH", f"/api/sessions/{session_id}%00", ["path", "session_id"]),
        ("DELETE", "/api/sessions/%00", ["path", "session_id"]),
        ("GET", "/api/sessions/%00/messages", ["path", "session_id"]),
        ("GET", f"/api/sessions/{session_id}/messages?before=%00", ["query", "before"]),
        ("GET", "/api/sessions?cursor=%00", ["query", "cursor"]),
        ("GET", "/api/sessions?limit=%00", ["query", "limit"]),
        ("GET", "/api/runs/%00", ["path", "message_id"]),
        ("GET", "/api/runs/%00/events", ["path", "message_id"]),
        ("GET", f"/api/runs/{uuid.uuid4()}/events?after=%00", ["query", "after"]),
        ("POST", "/api/runs/%00/cancel", ["path", "message_id"]),
    ]
    for method, url, loc in cases:
        response = client.request(method, url, json={"title": "t"} if method == "PATCH" else None)
        assert response.status_code == 422, (url, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_request"
        assert [d["loc"] for d in error["details"]] == [loc], url


# --- /v1, through the OpenAI SDK -----------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "messages", "extra"),
    [
        ("messages.[0].content", [{"role": "user", "content": f"h{NUL}i"}], {}),
        (
            "messages.[0].content",
            [{"role": "system", "content": f"be{NUL}"}, {"role": "user", "content": "hi"}],
            {},
        ),
        (
            "messages.[1].content",
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": f"hello{NUL}"},
                {"role": "user", "content": "again"},
            ],
            {},
        ),
        (
            "messages.[0].content.[1].text",
            [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": NUL}],
                }
            ],
            {},
        ),
        ("messages.[0].name", [{"role": "user", "content": "hi", "name": f"a{NUL}"}], {}),
        ("user", [{"role": "user", "content": "hi"}], {"user": f"u{NUL}"}),
    ],
    ids=["last user", "system", "assistant", "content part", "name", "user"],
)
def test_a_nul_in_a_completion_request_is_400_naming_the_param(
    server: AppServer, param: str, messages: list[dict[str, Any]], extra: dict[str, Any]
) -> None:
    before = session_ids(server)
    sdk = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    with sdk, pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(
            model="test-model",
            messages=messages,  # type: ignore[arg-type]
            **extra,
        )
    error = raised.value
    assert error.status_code == 400
    assert (error.code, error.param) == ("invalid_value", param)
    assert RULE in error.message
    assert session_ids(server) == before


# --- WebSocket ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "frame"),
    [
        ("message", {"message": f"h{NUL}i"}),
        ("system_prompt", {"message": "hi", "system_prompt": NUL}),
        ("client_message_id", {"message": "hi", "client_message_id": f"k{NUL}"}),
    ],
)
def test_a_nul_in_a_chat_frame_is_an_invalid_request_frame_naming_the_field(
    server: AppServer, field: str, frame: dict[str, Any]
) -> None:
    before = session_ids(server)
    with open_socket(server) as ws:
        send(ws, {"type": "chat", "request_id": "r1", **frame})
        error = recv(ws)
        assert (error["type"], error["code"], error["request_id"]) == (
            "error",
            "invalid_request",
            "r1",
        )
        assert error["details"] == [{"loc": ["chat", field], "msg": RULE, "type": "nul_character"}]
        send(ws, {"type": "ping", "request_id": "still-open"})
        assert recv(ws) == {"type": "pong", "request_id": "still-open"}
    assert session_ids(server) == before


# --- a token's subject ----------------------------------------------------------------------


def test_a_nul_in_a_tokens_subject_is_401_saying_so(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    server = make_server(auth="jwt", jwt_secret=SENTINEL_JWT_SECRET)
    token = make_token(f"alice{NUL}")
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=20) as client:
        for method, path in (("GET", "/api/sessions"), ("POST", "/api/chat")):
            response = client.request(method, path, json={"message": "hi"})
            assert response.status_code == 401, response.text
            error = response.json()["error"]
            assert error["code"] == "unauthorized"
            assert "NUL (U+0000)" in error["message"]
            assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    for how in ("header", "frame"):
        kwargs = {"additional_headers": headers} if how == "header" else {}
        with open_socket(server, **kwargs) as ws:
            if how == "frame":
                ws.send(json.dumps({"type": "auth", "token": token}))
            with pytest.raises(ConnectionClosed) as closed:
                recv(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
