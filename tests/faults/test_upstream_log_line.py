"""The operator's view of an upstream failure: one WARNING line in `chatstream serve`'s log."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.process import ServeProcess, clean_env, free_port, migrate
from tests.support.sentinels import SENTINEL_API_KEY
from tests.support.servers import FakeUpstreamThread
from tests.support.sse import Stream, read_stream

# What the user wrote: it goes to the model server, never into the log.
PROMPT = "my private words about kiwis"


def chat(server: ServeProcess, message: str, trace: str) -> Stream:
    with (
        httpx.Client(base_url=server.base_url, timeout=30) as client,
        client.stream(
            "POST", "/api/chat/stream", json={"message": message}, headers={"X-Request-ID": trace}
        ) as response,
    ):
        assert response.status_code == 200
        return read_stream(response)


@pytest.fixture(scope="module")
def shared_server(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream_thread: FakeUpstreamThread
) -> Iterator[ServeProcess]:
    """One `chatstream serve` for the cases below: each tells its lines by its own request id."""
    tmp_path = tmp_path_factory.mktemp("serve")
    environment = clean_env(
        OPENAI_API_KEY=SENTINEL_API_KEY,
        OPENAI_BASE_URL=fake_upstream_thread.base_url,
        CHATSTREAM_MODELS="test-model",
        CHATSTREAM_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/chatstream.db",
        CHATSTREAM_SPOOL_DIR=str(tmp_path / "spool"),
        CHATSTREAM_PORT=str(free_port()),
        CHATSTREAM_RATE_LIMIT="",
        CHATSTREAM_UPSTREAM_MAX_RETRIES="0",
    )
    migrate(environment)
    process = ServeProcess(environment, cwd=tmp_path)
    try:
        process.wait_ready()
        yield process
    finally:
        if process.process.poll() is None:
            process.stop()


def lines_of(server: ServeProcess, trace: str) -> list[str]:
    """Every line the server logged for the request `trace`, once it has logged them all.

    A request after it (its access line waited for) is the barrier: the log
    is one pipe, so every line written before that one has been read.
    """
    barrier = f"barrier-{trace}"
    httpx.get(f"{server.base_url}/healthz", headers={"X-Request-ID": barrier}, timeout=10)
    server.wait_for_line(f"[{barrier}]")
    return [line for line in server.lines if f"[{trace}]" in line]


def test_one_warning_line_with_status_model_reason_and_request_id(
    shared_server: ServeProcess,
) -> None:
    server = shared_server
    stream = chat(server, "[[fake status=404 echo_auth=1]] hi", "trace-upstream-404")
    assert stream.done["status"] == "error"
    (line,) = [line for line in lines_of(server, "trace-upstream-404") if "HTTP 404" in line]
    assert " WARNING " in line
    assert "model test-model" in line
    assert "bad key: Bearer [redacted]" in line
    assert sum("HTTP 404" in logged for logged in server.lines) == 1


MID_ANSWER = [
    # (case, directive, the client's message, the reason in the log line)
    pytest.param(
        'tokens=9 error_after=2 reason="The model is overloaded."',
        "The model server reported an error mid-answer: The model is overloaded.",
        "The model is overloaded",
        id="error-object",
    ),
    pytest.param(
        "tokens=5 malformed=not_json malformed_after=2",
        "The model server sent a malformed stream (an event is not JSON).",
        "an event is not JSON",
        id="not-json",
    ),
    pytest.param(
        "tokens=5 malformed=choices_null malformed_after=2",
        "The model server sent a malformed stream (`choices` is not a list).",
        "`choices` is not a list",
        id="wrong-shape",
    ),
    pytest.param(
        "tokens=5 no_finish=1",
        "The model server's answer was cut short: the stream ended without a finish_reason.",
        "the stream ended without a finish_reason",
        id="no-finish-reason",
    ),
    pytest.param(
        "tokens=9 drop_after=3",
        "The model server closed the connection mid-answer.",
        "closed the connection mid-answer",
        id="connection-closed",
    ),
    pytest.param(
        "tokens=9 rst_after=3",
        "The model server reset the connection mid-answer.",
        "reset the connection mid-answer",
        id="connection-reset",
    ),
]


@pytest.mark.parametrize(("directive", "message", "reason"), MID_ANSWER)
def test_a_stream_that_fails_mid_answer_is_one_warning_line_with_its_reason(
    shared_server: ServeProcess,
    request: pytest.FixtureRequest,
    directive: str,
    message: str,
    reason: str,
) -> None:
    server = shared_server
    case = request.node.callspec.id
    trace = f"trace-{case}"
    stream = chat(server, f"[[fake {directive} request_id=up-{case}]] {PROMPT}", trace)
    assert stream.types[-2:] == ["error", "done"]
    assert stream.of("delta"), "the failure came mid-answer, after some text"
    error = stream.of("error")[0].data
    assert (error["code"], error["message"]) == ("upstream_error", message)
    assert not error["message"].endswith("..")

    lines = lines_of(server, trace)
    warnings = [line for line in lines if " WARNING " in line]
    assert len(warnings) == 1, lines
    (line,) = warnings
    assert " chatstream." in line
    assert "model test-model" in line
    assert "HTTP 200" in line
    assert f"its request id up-{case}" in line
    assert reason in line
    assert not line.endswith(".."), line
    # Nothing the user wrote is in the log, at any level.
    assert PROMPT not in server.log_text()


def test_a_reason_with_its_own_full_stop_gets_no_second_one(shared_server: ServeProcess) -> None:
    server = shared_server
    stream = chat(server, '[[fake status=500 reason="Bad thing."]] hi', "trace-500")
    error = stream.of("error")[0].data
    assert error["message"] == "The model server failed (HTTP 500): Bad thing."
    (line,) = [line for line in lines_of(server, "trace-500") if " WARNING " in line]
    assert "HTTP 500: Bad thing." in line and not line.endswith("..")
