"""Thinking, keepalive, chunk coalescing, and every bound a run has."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx

from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.sse import Stream, iter_sse, read_stream


def stream_on(server: AppServer, **body: Any) -> Stream:
    with (
        httpx.Client(base_url=server.base_url, timeout=20) as client,
        client.stream("POST", "/api/chat/stream", json=body) as response,
    ):
        assert response.status_code == 200
        return read_stream(response)


def test_thinking_events_flow_until_the_first_token(make_server: Any) -> None:
    server = make_server(thinking_interval_s=0.05)
    stream = stream_on(server, message="[[fake first_token_ms=400 tokens=3]] hi")
    kinds = stream.types
    first_delta = kinds.index("delta")
    thinking = stream.of("thinking")
    assert len(thinking) >= 3
    assert "thinking" not in kinds[first_delta:]
    elapsed = [e.data["elapsed_ms"] for e in thinking]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 40


def test_keepalive_comment_while_idle(make_server: Any, fake: FakeUpstreamThread) -> None:
    server = make_server(keepalive_interval_s=0.05, upstream_idle_timeout_s=30)
    with (
        httpx.Client(base_url=server.base_url, timeout=20) as client,
        client.stream(
            "POST", "/api/chat/stream", json={"message": "[[fake tokens=4 stall_after=2]] hi"}
        ) as response,
    ):
        items: list[Any] = []
        stream = iter_sse(response)
        for item in stream:
            items.append(item)
            if items.count(": keepalive") >= 2:
                fake.fake.release(wait_for=1)
                break
        rest = read_stream(stream)
    assert ": keepalive" in items
    assert rest.done["status"] == "complete"


def test_chunk_chars_coalesces_deltas(make_server: Any) -> None:
    server = make_server()
    plain = stream_on(server, message="[[fake tokens=30]] hi")
    chunked = stream_on(server, message="[[fake tokens=30]] hi", chunk_chars=40)
    assert chunked.text == plain.text
    pieces = [e.data["text"] for e in chunked.of("delta")]
    assert all(len(piece) >= 40 for piece in pieces[:-1])
    assert len(pieces) < plain.types.count("delta")


def test_first_token_timeout(make_server: Any) -> None:
    server = make_server(upstream_first_token_timeout_s=0.3)
    stream = stream_on(server, message="[[fake first_token_ms=5000 tokens=3]] hi")
    error = stream.of("error")[0].data
    assert (error["code"], error["retryable"]) == ("upstream_timeout", True)
    assert stream.done["status"] == "error"


def test_idle_timeout_between_tokens(make_server: Any, fake: FakeUpstreamThread) -> None:
    server = make_server(upstream_idle_timeout_s=0.3)
    stream = stream_on(server, message="[[fake tokens=10 stall_after=3]] hi")
    assert stream.types.count("delta") == 3
    error = stream.of("error")[0].data
    assert (error["code"], error["retryable"]) == ("upstream_timeout", True)
    assert stream.done["status"] == "error"
    # The stalled upstream connection was closed, not leaked.
    fake.fake.wait_for(lambda: fake.fake.active_streams == 0)


def test_max_run_duration(make_server: Any) -> None:
    server = make_server(max_run_duration_s=0.5)
    stream = stream_on(server, message="[[fake tokens=100 interval_ms=20]] hi")
    error = stream.of("error")[0].data
    assert (error["code"], error["retryable"]) == ("upstream_timeout", False)
    assert 5 < stream.types.count("delta") < 100
    assert stream.done["status"] == "error"


def test_usage_is_estimated_when_the_upstream_sends_none(make_server: Any) -> None:
    server = make_server()
    stream = stream_on(server, message="[[fake tokens=12 no_usage=1]] hi")
    usage = stream.done["usage"]
    assert usage["completion_tokens"] == 12
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + 12


def test_server_at_capacity_answers_503(make_server: Any, fake: FakeUpstreamThread) -> None:
    server = make_server(max_live_runs=1)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        with client.stream(
            "POST", "/api/chat/stream", json={"message": "[[fake tokens=3 stall_after=1]] one"}
        ) as first:
            events = iter_sse(first)
            read_stream(events, stop_after=2)
            refused = client.post("/api/chat/stream", json={"message": "two"})
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "unavailable"
            fake.fake.release(wait_for=1)
            assert read_stream(events).done["status"] == "complete"
        sessions = client.get("/api/sessions").json()["items"]
        assert len(sessions) == 1  # the refused chat left no trace


def test_ended_runs_hold_only_their_log_and_the_oldest_are_forgotten_first(
    make_server: Callable[..., AppServer],
) -> None:
    server = make_server(max_retained_runs=2)
    ids = []
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        for n in range(4):
            answer = client.post("/api/chat", json={"message": f"[[fake tokens=3]] {n}"}).json()
            ids.append(answer["message"]["id"])
        for message_id in ids[:2]:
            assert client.get(f"/api/runs/{message_id}/events").status_code == 404
            state = client.get(f"/api/runs/{message_id}").json()
            assert (state["status"], state["last_seq"]) == ("complete", None)  # from the database
        for message_id in ids[2:]:
            with client.stream("GET", f"/api/runs/{message_id}/events") as response:
                assert read_stream(response).done["status"] == "complete"
    retained = [server.state.registry.local(uuid.UUID(i), "anonymous") for i in ids[2:]]
    for run in retained:
        assert run is not None and not run.live
        assert run.generation is None and run.spec.messages == []
