"""Validation messages a person understands (and can act on without reading the source)."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.support.servers import AppServer
from tests.support.sse import read_stream

BODY = b'{"message": "hi"}'


def error_of(response: httpx.Response, status: int = 422) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == {422: "invalid_request", 409: "idempotency_conflict"}.get(
        status, error["code"]
    )
    return dict(error)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}],
    ids=["no content type", "text/plain", "form"],
)
def test_a_body_without_the_json_content_type_says_so(
    client: httpx.Client, headers: dict[str, str]
) -> None:
    error = error_of(client.post("/api/chat/stream", content=BODY, headers=headers))
    assert "`Content-Type: application/json`" in str(error["message"])


def test_a_body_that_is_not_json_says_so(client: httpx.Client) -> None:
    response = client.post(
        "/api/chat", content=b'{"message": hi}', headers={"Content-Type": "application/json"}
    )
    assert str(error_of(response)["message"]).startswith("The body is not valid JSON")


def test_json_that_is_not_an_object_says_so(client: httpx.Client) -> None:
    error = error_of(client.post("/api/chat", json=["hi"]))
    assert error["message"] == "The body must be a JSON object."


def test_a_whitespace_message_says_what_is_missing_without_a_regex(client: httpx.Client) -> None:
    response = client.post("/api/chat/stream", json={"message": " \n\t "})
    error = error_of(response)
    assert error["message"] == (
        "The request is not valid: message must contain some non-whitespace text."
    )
    assert error["details"] == [
        {
            "loc": ["body", "message"],
            "msg": "must contain some non-whitespace text",
            "type": "string_pattern_mismatch",
        }
    ]
    assert "\\s" not in response.text and "should match" not in response.text


def test_an_unknown_field_is_named(client: httpx.Client) -> None:
    error = error_of(client.post("/api/chat", json={"message": "hi", "temprature": 1}))
    assert (
        error["message"] == "The request is not valid: temprature is not a field of this request."
    )


def test_a_413_names_the_limit_and_the_setting(server: AppServer) -> None:
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        error = error_of(
            client.post("/api/chat/stream", json={"message": "x" * 70_000}), status=413
        )
    assert error["code"] == "payload_too_large"
    assert error["message"] == (
        "The request body is over the limit of 65536 bytes (CHATSTREAM_MAX_BODY_BYTES)."
    )


def test_a_chunked_413_names_the_limit_too(server: AppServer) -> None:
    """No Content-Length: counted as it streams in; the same message."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        piece = b"x" * 70_000
        sock.sendall(b"%x\r\n%b\r\n0\r\n\r\n" % (len(piece), piece))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"over the limit of 65536 bytes (CHATSTREAM_MAX_BODY_BYTES)" in answer


def test_a_reused_client_message_id_with_another_message_is_409(client: httpx.Client) -> None:
    first = client.post("/api/chat", json={"message": "one", "client_message_id": "k-1"})
    assert first.status_code == 200
    # The same message again is a safe retry: the same answer.
    again = client.post("/api/chat", json={"message": "one", "client_message_id": "k-1"})
    assert again.json()["message"]["id"] == first.json()["message"]["id"]
    for path in ("/api/chat", "/api/chat/stream"):
        error = error_of(
            client.post(path, json={"message": "two", "client_message_id": "k-1"}), status=409
        )
        assert "client_message_id" in str(error["message"])
    with client.stream(
        "POST", "/api/chat/stream", json={"message": "one", "client_message_id": "k-1"}
    ) as replay:
        assert read_stream(replay).done["message_id"] == first.json()["message"]["id"]
