"""Every validation rule of the contract's section 2: status, JSON error shape, nothing written."""

from __future__ import annotations

import socket
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import StatementLog
from tests.support.servers import AppServer


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


BAD_CHAT_BODIES = [
    pytest.param({}, "message", id="missing message"),
    pytest.param({"message": ""}, "message", id="empty message"),
    pytest.param({"message": "   \n\t "}, "message", id="whitespace message"),
    # Whitespace to one of Unicode and JSON Schema only: the schema and the check must agree.
    pytest.param({"message": "\u0085"}, "message", id="next line message"),
    pytest.param({"message": "\ufeff\u3000"}, "message", id="unicode whitespace message"),
    pytest.param({"message": "x" * 4001}, "message", id="message over max chars"),
    pytest.param({"message": 5}, "message", id="message not a string"),
    pytest.param({"message": "hi", "surprise": 1}, "surprise", id="unknown field"),
    pytest.param({"message": "hi", "temperature": 2.5}, "temperature", id="temperature over 2"),
    pytest.param({"message": "hi", "temperature": -0.1}, "temperature", id="temperature under 0"),
    pytest.param({"message": "hi", "max_tokens": 0}, "max_tokens", id="max_tokens 0"),
    pytest.param({"message": "hi", "max_tokens": 4097}, "max_tokens", id="max_tokens over cap"),
    pytest.param({"message": "hi", "model": "gpt-nope"}, "model", id="model not allowed"),
    pytest.param({"message": "hi", "session_id": "not-a-uuid"}, "session_id", id="bad session id"),
    pytest.param({"message": "hi", "chunk_chars": 0}, "chunk_chars", id="chunk_chars 0"),
    pytest.param({"message": "hi", "chunk_chars": 4097}, "chunk_chars", id="chunk_chars over 4096"),
    pytest.param(
        {"message": "hi", "system_prompt": 7}, "system_prompt", id="system prompt not a string"
    ),
]


@pytest.mark.parametrize("path", ["/api/chat/stream", "/api/chat"])
@pytest.mark.parametrize(("body", "field"), BAD_CHAT_BODIES)
def test_bad_chat_bodies_are_422_and_write_nothing(
    client: httpx.Client, sql_log: StatementLog, path: str, body: dict[str, Any], field: str
) -> None:
    error = assert_error(client.post(path, json=body), 422, "invalid_request")
    assert any(field in detail["loc"] for detail in error["details"]), error
    assert all("input" not in detail for detail in error["details"])
    assert sql_log.matching("INSERT") == []


def test_invalid_json_is_422(client: httpx.Client) -> None:
    response = client.post(
        "/api/chat/stream", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(response, 422, "invalid_request")


def test_unknown_session_is_404(client: httpx.Client, sql_log: StatementLog) -> None:
    body = {"message": "hi", "session_id": str(uuid.uuid4())}
    assert_error(client.post("/api/chat/stream", json=body), 404, "not_found")
    assert sql_log.matching("INSERT") == []


def test_body_over_the_limit_is_413(client: httpx.Client) -> None:
    big = {"message": "x" * 70_000}
    assert_error(client.post("/api/chat/stream", json=big), 413, "payload_too_large")


def test_chunked_body_over_the_limit_is_413_before_it_is_read_whole(server: AppServer) -> None:
    """No Content-Length: the server must stop at the limit, not read everything first."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/chat/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        piece = b"x" * 16384
        chunk = b"%x\r\n%b\r\n" % (len(piece), piece)
        sent = 0
        # Send up to 4 MB but stop as soon as the answer arrives.
        sock.settimeout(0.5)
        answer = b""
        while sent < 4_000_000:
            try:
                sock.sendall(chunk)
            except OSError:
                break
            sent += len(piece)
            try:
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            if answer:
                break
        sock.settimeout(10)
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 4_000_000
    assert b'"payload_too_large"' in answer or b"Content-Length" in answer


def test_declared_length_over_the_limit_is_413(server: AppServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/chat/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000000\r\n\r\n{"
        )
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 413")
    assert b'"payload_too_large"' in answer


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/sessions/{id}"),
        ("PATCH", "/api/sessions/{id}"),
        ("DELETE", "/api/sessions/{id}"),
        ("GET", "/api/sessions/{id}/messages"),
        ("GET", "/api/runs/{id}"),
        ("GET", "/api/runs/{id}/events"),
        ("POST", "/api/runs/{id}/cancel"),
    ],
)
def test_unknown_ids_are_404(client: httpx.Client, method: str, path: str) -> None:
    kwargs: dict[str, Any] = {"json": {"title": "t"}} if method == "PATCH" else {}
    response = client.request(method, path.format(id=uuid.uuid4()), **kwargs)
    assert_error(response, 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("GET", "/api/sessions", {"params": {"limit": 201}}),
        ("GET", "/api/sessions", {"params": {"limit": 0}}),
        ("GET", "/api/sessions", {"params": {"cursor": "garbage!"}}),
        ("GET", "/api/sessions/not-a-uuid", {}),
        ("POST", "/api/sessions", {"json": {"title": "t", "extra": 1}}),
        ("POST", "/api/sessions", {"json": {"model": "gpt-nope"}}),
        ("POST", "/api/sessions", {"json": {"title": ""}}),
        ("GET", "/api/runs/{id}/events", {"params": {"after": -1}}),
        ("GET", "/api/runs/not-a-uuid", {}),
    ],
)
def test_bad_parameters_are_422(
    client: httpx.Client, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    response = client.request(method, path.format(id=uuid.uuid4()), **kwargs)
    assert_error(response, 422, "invalid_request")


def test_bad_last_event_id_on_a_live_run_is_422(client: httpx.Client) -> None:
    started = client.post("/api/chat", json={"message": "[[fake tokens=2]] hi"}).json()
    message_id = started["message"]["id"]
    response = client.get(f"/api/runs/{message_id}/events", headers={"Last-Event-ID": "abc"})
    assert_error(response, 422, "invalid_request")


def test_messages_page_limit_over_200_is_422(client: httpx.Client) -> None:
    session = client.post("/api/sessions", json={}).json()
    response = client.get(f"/api/sessions/{session['id']}/messages", params={"limit": 201})
    assert_error(response, 422, "invalid_request")


def test_before_that_is_not_in_the_session_is_404(client: httpx.Client) -> None:
    session = client.post("/api/sessions", json={}).json()
    response = client.get(
        f"/api/sessions/{session['id']}/messages", params={"before": str(uuid.uuid4())}
    )
    assert_error(response, 404, "not_found")


def test_unknown_route_and_method_use_the_error_shape(client: httpx.Client) -> None:
    assert_error(client.get("/api/nothing-here"), 404, "not_found")
    assert_error(client.put("/api/sessions"), 405, "method_not_allowed")
