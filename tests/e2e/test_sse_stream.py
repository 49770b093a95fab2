"""The SSE stream of `POST /api/chat/stream`, against real uvicorn and the fake upstream."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.conftest import StatementLog
from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.sse import Stream, iter_sse, read_stream


def stream_chat(client: httpx.Client, **body: Any) -> Stream:
    with client.stream("POST", "/api/chat/stream", json=body) as response:
        assert response.status_code == 200, response.read()
        return read_stream(response)


def messages_of(client: httpx.Client, session_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/api/sessions/{session_id}/messages")
    assert response.status_code == 200
    return list(response.json()["items"])


def test_sse_framing_and_headers(client: httpx.Client) -> None:
    with client.stream(
        "POST", "/api/chat/stream", json={"message": "[[fake tokens=25]] hi"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        stream = read_stream(response)

    assert [e.id for e in stream.events] == list(range(1, len(stream.events) + 1))
    assert all(e.event == e.data["type"] for e in stream.events)
    assert all("\n" not in e.raw_data for e in stream.events)
    assert stream.types[0] == "start"
    assert stream.types[-1] == "done"
    assert stream.types.count("delta") == 25
    start = stream.events[0].data
    assert set(start) == {"type", "session_id", "message_id", "user_message_id", "model"}
    assert start["model"] == "test-model"
    done = stream.done
    assert done["status"] == "complete"
    assert done["finish_reason"] == "stop"
    assert done["persisted"] is True
    assert done["message_id"] == start["message_id"]
    assert done["usage"]["completion_tokens"] == 25
    assert set(done["metrics"]) == {"ttft_ms", "duration_ms", "tokens_per_second"}


def test_deltas_concatenate_to_the_persisted_answer(client: httpx.Client) -> None:
    stream = stream_chat(client, message="[[fake tokens=40]] tell me")
    start = stream.events[0].data
    user, assistant = messages_of(client, start["session_id"])
    assert user["id"] == start["user_message_id"]
    assert user["role"] == "user" and user["content"] == "[[fake tokens=40]] tell me"
    assert assistant["id"] == start["message_id"]
    assert assistant["role"] == "assistant"
    assert assistant["status"] == "complete"
    assert assistant["content"] == stream.text
    assert len(stream.text) > 40
    assert assistant["usage"] == stream.done["usage"]
    assert assistant["metrics"] == stream.done["metrics"]


def test_one_insert_per_row_and_no_update_per_chunk(
    client: httpx.Client, sql_log: StatementLog
) -> None:
    stream_chat(client, message="[[fake tokens=60]] first")
    inserts = sql_log.matching("INSERT")
    assert len([s for s in inserts if "INTO sessions" in s]) == 1
    assert len([s for s in inserts if "INTO messages" in s]) == 2  # the user's, then the answer
    assert sql_log.matching("UPDATE") == []
    assert sql_log.matching("DELETE") == []


def test_continuing_a_session_writes_one_answer_row(
    client: httpx.Client, sql_log: StatementLog
) -> None:
    first = stream_chat(client, message="[[fake tokens=5]] one")
    session_id = first.events[0].data["session_id"]
    sql_log.statements.clear()
    stream_chat(client, message="[[fake tokens=50]] two", session_id=session_id)
    assert len(sql_log.matching("INSERT INTO messages")) == 2
    # The session's updated_at moves once, with the user's message, not per chunk.
    assert len(sql_log.matching("UPDATE sessions")) == 1
    assert not any("messages" in s for s in sql_log.matching("UPDATE"))


def test_done_comes_after_the_commit(client: httpx.Client) -> None:
    with client.stream(
        "POST", "/api/chat/stream", json={"message": "[[fake tokens=3]] x"}
    ) as response:
        for item in iter_sse(response):
            if not isinstance(item, str) and item.type == "done":
                # Still inside the stream: the message must already be readable.
                session_id = item.data["message_id"]
                state = client.get(f"/api/runs/{session_id}").json()
                assert state["status"] == "complete"
                start_session = client.get("/api/sessions").json()["items"][0]["id"]
                contents = [m["role"] for m in messages_of(client, start_session)]
                assert contents == ["user", "assistant"]


def test_resume_with_last_event_id_yields_exactly_the_later_events(
    client: httpx.Client, fake: FakeUpstreamThread
) -> None:
    with client.stream(
        "POST", "/api/chat/stream", json={"message": "[[fake tokens=30 interval_ms=15]] go"}
    ) as response:
        head = read_stream(response, stop_after=6)
    message_id = head.events[0].data["message_id"]

    full = _follow(client, message_id)
    assert [e.id for e in full.events] == list(range(1, len(full.events) + 1))
    assert full.types[-1] == "done"

    resumed = _follow(client, message_id, headers={"Last-Event-ID": "6"})
    assert [e.id for e in resumed.events] == [e.id for e in full.events[6:]]
    assert [e.data for e in resumed.events] == [e.data for e in full.events[6:]]

    by_query = _follow(client, message_id, params={"after": "6"})
    assert [e.data for e in by_query.events] == [e.data for e in full.events[6:]]
    # The header wins over the query parameter (EventSource sets it on reconnect).
    both = _follow(client, message_id, params={"after": "2"}, headers={"Last-Event-ID": "10"})
    assert both.events[0].id == 11


def test_resume_mid_run_then_follows_live(client: httpx.Client, fake: FakeUpstreamThread) -> None:
    with client.stream(
        "POST", "/api/chat/stream", json={"message": "[[fake tokens=10 stall_after=4]] go"}
    ) as response:
        head = read_stream(response, stop_after=4)  # start + 3 deltas; the fourth may be in flight
    message_id = head.events[0].data["message_id"]
    with client.stream(
        "GET", f"/api/runs/{message_id}/events", headers={"Last-Event-ID": "3"}
    ) as response:
        items = iter_sse(response)
        first = next(e for e in items if not isinstance(e, str))
        assert first.id == 4
        fake.fake.release(wait_for=1)
        rest = read_stream(items)
    assert rest.types[-1] == "done"
    assert [e.id for e in rest.events] == list(range(5, 5 + len(rest.events)))


def _follow(client: httpx.Client, message_id: str, **kwargs: Any) -> Stream:
    with client.stream("GET", f"/api/runs/{message_id}/events", **kwargs) as response:
        assert response.status_code == 200
        return read_stream(response)


def test_disconnected_client_leaves_a_run_that_completes(client: httpx.Client) -> None:
    with client.stream(
        "POST", "/api/chat/stream", json={"message": "[[fake tokens=40 interval_ms=10]] go"}
    ) as response:
        head = read_stream(response, stop_after=3)
    # The connection is closed here, mid-stream.
    message_id = head.events[0].data["message_id"]
    rest = _follow(client, message_id)
    assert rest.done["status"] == "complete"
    assert rest.done["persisted"] is True
    session_id = head.events[0].data["session_id"]
    answer = messages_of(client, session_id)[-1]
    assert answer["status"] == "complete"
    assert answer["content"] == rest.text
    assert rest.text.count(" ") == 40


def test_disconnect_policy_cancel_stops_the_run(make_server: Any, fake: FakeUpstreamThread) -> None:
    server: AppServer = make_server(on_disconnect="cancel")
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        with client.stream(
            "POST", "/api/chat/stream", json={"message": "[[fake tokens=10 stall_after=3]] go"}
        ) as response:
            head = read_stream(response, stop_after=3)
        message_id = head.events[0].data["message_id"]
        run = server.state.registry.local(uuid.UUID(message_id), "anonymous")
        server.call(run.finished.wait)
        assert run.status == "cancelled"
        answer = messages_of(client, head.events[0].data["session_id"])[-1]
        assert answer["status"] == "cancelled"
        # Everything generated before the stall is kept: more than the client read.
        assert answer["content"].startswith(head.text)
        assert answer["content"].count(" ") == 3


def test_cancel_mid_stream_persists_the_partial(
    client: httpx.Client, fake: FakeUpstreamThread
) -> None:
    with client.stream(
        "POST", "/api/chat/stream", json={"message": "[[fake tokens=20 stall_after=5]] go"}
    ) as response:
        items = iter_sse(response)
        seen: list[Any] = []
        for item in items:
            if isinstance(item, str):
                continue
            seen.append(item)
            if len([e for e in seen if e.type == "delta"]) == 5:
                cancel = client.post(f"/api/runs/{seen[0].data['message_id']}/cancel")
                assert cancel.status_code == 202
                assert cancel.json()["status"] == "cancelling"
                break
        rest = read_stream(items)
    stream = Stream(events=seen + rest.events)
    assert "error" not in stream.types
    assert stream.types[-1] == "done"
    assert stream.done["status"] == "cancelled"
    assert stream.done["persisted"] is True
    answer = messages_of(client, seen[0].data["session_id"])[-1]
    assert answer["status"] == "cancelled"
    assert answer["content"] == stream.text
    assert stream.text.count(" ") == 5
    # Cancelling again: the run has ended.
    again = client.post(f"/api/runs/{seen[0].data['message_id']}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "conflict"


def test_upstream_drop_mid_stream_is_an_error_with_the_partial_saved(client: httpx.Client) -> None:
    stream = stream_chat(client, message="[[fake tokens=20 drop_after=7]] go")
    assert stream.types[-2:] == ["error", "done"]
    error = stream.of("error")[0].data
    assert error["code"] == "upstream_error"
    assert error["retryable"] is True
    assert stream.done["status"] == "error"
    assert stream.done["persisted"] is True
    assert stream.types.count("delta") == 7
    answer = messages_of(client, stream.events[0].data["session_id"])[-1]
    assert answer["status"] == "error"
    assert answer["content"] == stream.text


def test_upstream_reset_mid_stream_is_an_error_with_the_partial_saved(client: httpx.Client) -> None:
    stream = stream_chat(client, message="[[fake tokens=20 rst_after=4]] go")
    assert stream.types[-2:] == ["error", "done"]
    assert stream.of("error")[0].data["code"] == "upstream_error"
    assert stream.types.count("delta") == 4
    answer = messages_of(client, stream.events[0].data["session_id"])[-1]
    assert (answer["status"], answer["content"]) == ("error", stream.text)


def test_stream_without_finish_reason_is_a_truncation(client: httpx.Client) -> None:
    stream = stream_chat(client, message="[[fake tokens=6 no_finish=1]] go")
    assert stream.types.count("delta") == 6
    error = stream.of("error")[0].data
    assert (error["code"], error["retryable"]) == ("upstream_error", True)
    assert stream.done["status"] == "error"
    assert stream.done["finish_reason"] is None


def test_in_stream_error_object_ends_the_run(client: httpx.Client) -> None:
    stream = stream_chat(client, message="[[fake tokens=6 error_after=2]] go")
    assert stream.types.count("delta") == 2
    assert stream.of("error")[0].data["code"] == "upstream_error"
    assert stream.done["status"] == "error"


def test_upstream_500_is_upstream_error(client: httpx.Client) -> None:
    stream = stream_chat(client, message="[[fake status=500]] go")
    assert stream.types == ["start", "error", "done"]
    error = stream.of("error")[0].data
    assert (error["code"], error["retryable"]) == ("upstream_error", True)
    assert stream.done["status"] == "error"
    assert stream.done["persisted"] is True


def test_upstream_429_is_upstream_rate_limited(client: httpx.Client) -> None:
    stream = stream_chat(client, message="[[fake status=429 retry_after=7]] go")
    assert stream.types == ["start", "error", "done"]
    error = stream.of("error")[0].data
    assert (error["code"], error["retryable"]) == ("upstream_rate_limited", True)


def test_upstream_400_is_not_retryable(client: httpx.Client) -> None:
    stream = stream_chat(client, message="[[fake status=400]] go")
    error = stream.of("error")[0].data
    assert (error["code"], error["retryable"]) == ("upstream_error", False)


def test_429_then_success_is_retried_before_the_first_token(
    make_server: Any, fake: FakeUpstreamThread
) -> None:
    server: AppServer = make_server(upstream_max_retries=2)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        stream = stream_chat(
            client, message="[[fake status=429 retry_after=0.05 fail_times=2 key=r1 tokens=4]] go"
        )
    assert stream.done["status"] == "complete"
    assert stream.types.count("delta") == 4
    assert len(fake.fake.requests) == 3


def test_error_messages_carry_the_upstream_reason_and_no_key(client: httpx.Client) -> None:
    stream = stream_chat(client, message="[[fake status=401]] go")
    error = stream.of("error")[0].data
    assert error["code"] == "upstream_error"
    # The model server's own reason (issue 11.1), and never our key.
    assert error["message"].endswith("(HTTP 401): emulated failure.")
    assert "sk-" not in str(stream.events)


def test_an_upstream_that_echoes_our_key_in_its_error_does_not_leak_it(
    client: httpx.Client,
) -> None:
    """The fake upstream puts the request's Authorization header (our API key) in its body."""
    stream = stream_chat(client, message="[[fake status=401 echo_auth=1]] go")
    error = stream.of("error")[0].data
    assert error["code"] == "upstream_error" and error["retryable"] is False
    # The suite-wide watch fails the session if the key got into any response or log;
    # the upstream's reason is passed on with the credential redacted.
    assert error["message"].endswith("(HTTP 401): bad key: Bearer [redacted].")
    failed = client.post("/api/chat", json={"message": "[[fake status=401 echo_auth=1]] go"})
    assert failed.status_code == 502 and "Bearer [redacted]" in failed.text
