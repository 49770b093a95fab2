"""What the model server said, and why it could not be reached, reach the client and the log."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import httpx
import pytest

from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.sse import Stream, read_stream

UPSTREAM_LOGGER = "chatstream.upstream.stream"


def chat(server: AppServer, message: str, **headers: str) -> Stream:
    with (
        httpx.Client(base_url=server.base_url, timeout=30) as client,
        client.stream(
            "POST", "/api/chat/stream", json={"message": message}, headers=headers
        ) as response,
    ):
        assert response.status_code == 200
        return read_stream(response)


def upstream_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == UPSTREAM_LOGGER and record.levelno == logging.WARNING
    ]


def test_the_model_servers_reason_reaches_the_client_and_is_logged_once(
    server: AppServer, caplog: pytest.LogCaptureFixture
) -> None:
    stream = chat(server, "[[fake status=404]] hi")
    assert stream.types == ["start", "error", "done"]
    error = stream.of("error")[0].data
    assert error["code"] == "upstream_error"
    assert error["retryable"] is False
    # The fake's own words ("emulated failure") are in the client's message.
    assert error["message"] == (
        "The model server rejected the request (HTTP 404): emulated failure."
    )
    (line,) = upstream_warnings(caplog)
    assert "model test-model" in line
    assert "HTTP 404: emulated failure" in line
    assert "CHATSTREAM_MODELS" in line  # what to check, for the operator


@pytest.mark.parametrize(
    ("status", "code", "start"),
    [
        (400, "upstream_error", "The model server rejected the request (HTTP 400)"),
        (401, "upstream_error", "The model server refused chatstream's credentials (HTTP 401)"),
        (500, "upstream_error", "The model server failed (HTTP 500)"),
        (429, "upstream_rate_limited", "The model server is rate limiting us (HTTP 429)"),
    ],
)
def test_an_echoed_credential_never_reaches_the_client_or_the_log(
    server: AppServer, caplog: pytest.LogCaptureFixture, status: int, code: str, start: str
) -> None:
    # The fake puts the Authorization header it received (the sentinel API key)
    # in its error message; the session-wide sentinel watch fails on any leak.
    stream = chat(server, f"[[fake status={status} echo_auth=1]] hi")
    error = stream.of("error")[0].data
    assert error["code"] == code
    assert error["message"].startswith(start)
    assert "bad key: Bearer [redacted]" in error["message"]
    assert "sk-" not in error["message"]
    (line,) = upstream_warnings(caplog)
    assert f"HTTP {status}: bad key: Bearer [redacted]" in line


def test_the_non_streaming_answer_carries_the_reason_too(client: httpx.Client) -> None:
    response = client.post("/api/chat", json={"message": "[[fake status=400]] hi"})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_error"
    assert "(HTTP 400): emulated failure" in error["message"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def refused() -> tuple[str, str]:
    port = closed_port()
    return (
        f"http://127.0.0.1:{port}/v1",
        f"could not connect to 127.0.0.1:{port}: connection refused",
    )


def unresolvable() -> tuple[str, str]:
    return (
        "http://model-server.invalid:8080/v1",
        "could not resolve host model-server.invalid",
    )


@pytest.mark.parametrize("target", [refused, unresolvable], ids=["refused", "dns"])
def test_a_connection_that_cannot_be_made_is_named_not_called_a_timeout(
    make_server: Callable[..., AppServer],
    caplog: pytest.LogCaptureFixture,
    target: Callable[[], tuple[str, str]],
) -> None:
    base_url, expected = target()
    server = make_server(openai_base_url=base_url)
    stream = chat(server, "hello")
    assert stream.types == ["start", "error", "done"]
    error = stream.of("error")[0].data
    assert error["code"] == "upstream_error"
    assert "timeout" not in error["message"].lower() and "in time" not in error["message"]
    assert expected in error["message"]
    (line,) = upstream_warnings(caplog)
    assert expected in line and "OPENAI_BASE_URL" in line


def test_a_failed_tls_handshake_is_named(
    make_server: Callable[..., AppServer],
    fake: FakeUpstreamThread,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # https:// to a port that speaks plain HTTP: the handshake fails at once.
    server = make_server(openai_base_url=f"https://127.0.0.1:{fake.port}/v1")
    stream = chat(server, "hello")
    error = stream.of("error")[0].data
    assert error["code"] == "upstream_error"
    assert f"TLS handshake with 127.0.0.1:{fake.port} failed" in error["message"]
    assert error["retryable"] is False
    (line,) = upstream_warnings(caplog)
    assert "OPENAI_BASE_URL must start with http://" in line
