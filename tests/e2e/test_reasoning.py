"""Reasoning, streamed and kept apart (issue #25 item 1), native SSE and WebSocket.

The fake upstream thinks aloud under each of the three names servers use
(`delta.reasoning_content`, `delta.reasoning`, `delta.reasoning_details[]`):
each reaches the client as numbered `reasoning` events before the `delta`s,
is saved in the message's own `reasoning`, never in its `content`, comes
back on a resume and on a replay, and is never sent back to the model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.sse import Stream, read_stream
from tests.support.ws import open_socket, recv_until, send

THOUGHT = "Let me think this through step by step. "  # the emulator's 8 reasoning tokens
SHAPES = ["reasoning_content", "reasoning", "details"]


def think(shape: str, tokens: int = 3, extra: str = "") -> str:
    return f"[[fake reasoning=8 reasoning_shape={shape} tokens={tokens} {extra}]] why?"


def stream_chat(client: httpx.Client, body: dict[str, Any]) -> Stream:
    with client.stream("POST", "/api/chat/stream", json=body) as response:
        assert response.status_code == 200, response.read()
        return read_stream(response)


def reasoning_of(stream: Stream) -> str:
    return "".join(e.data["text"] for e in stream.of("reasoning"))


def stored_answer(client: httpx.Client, session_id: str) -> dict[str, Any]:
    items = client.get(f"/api/sessions/{session_id}/messages").json()["items"]
    return dict(items[-1])


def check_reasoning_kept_apart(server: AppServer, fake: FakeUpstreamThread, shape: str) -> None:
    """The whole promise, for one shape; shared with the PostgreSQL test."""
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        first = stream_chat(client, {"message": think(shape)})
        # Numbered like every event, all before the answer's text.
        assert [e.id for e in first.events] == list(range(1, len(first.events) + 1))
        assert first.types[1:9] == ["reasoning"] * 8
        assert first.types.index("delta") > max(
            i for i, kind in enumerate(first.types) if kind == "reasoning"
        )
        assert reasoning_of(first) == THOUGHT
        assert THOUGHT not in first.text and first.text
        usage = first.done["usage"]
        assert usage["reasoning_tokens"] == 8  # completion_tokens_details.reasoning_tokens
        assert usage["completion_tokens"] == 8 + 3

        session_id = first.events[0].data["session_id"]
        message_id = first.events[0].data["message_id"]
        answer = stored_answer(client, session_id)
        assert (answer["content"], answer["reasoning"]) == (first.text, THOUGHT)
        assert answer["usage"]["reasoning_tokens"] == 8

        # Resumed after any event: the rest of the same numbered events.
        with client.stream("GET", f"/api/runs/{message_id}/events?after=4") as response:
            resumed = read_stream(response)
        assert [e.id for e in resumed.events] == [e.id for e in first.events[4:]]
        assert reasoning_of(resumed) == THOUGHT[len("Let me think ") :]

        # The next turn's context has the earlier answer, never its reasoning.
        stream_chat(client, {"message": "[[fake tokens=1]] and?", "session_id": session_id})
        sent = fake.fake.requests[-1]["messages"]
        assert [m["content"] for m in sent if m["role"] == "assistant"] == [first.text]
        assert all("reasoning" not in key for m in sent for key in m)


@pytest.mark.parametrize("shape", SHAPES)
def test_reasoning_streams_numbered_and_is_saved_apart_in_each_shape(
    server: AppServer, fake: FakeUpstreamThread, shape: str
) -> None:
    check_reasoning_kept_apart(server, fake, shape)


def test_a_replayed_run_gives_its_reasoning_back(make_server: Callable[..., AppServer]) -> None:
    # Runs leave memory at once: a repeat is answered from the stored rows.
    server = make_server(run_retention_s=0)
    body = {"message": think("reasoning"), "client_message_id": "think-1"}
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        first = stream_chat(client, body)
        again = stream_chat(client, body)
    assert again.types == ["start", "reasoning", "delta", "done"]
    assert reasoning_of(again) == reasoning_of(first) == THOUGHT
    assert again.text == first.text


def test_thinking_heartbeats_stop_once_reasoning_flows(
    make_server: Callable[..., AppServer],
) -> None:
    server = make_server(thinking_interval_s=0.05)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        slow = "[[fake reasoning=8 tokens=2 first_token_ms=300 interval_ms=150]] why?"
        stream = stream_chat(client, {"message": slow})
    first_reasoning = stream.types.index("reasoning")
    assert "thinking" in stream.types[:first_reasoning]  # before anything showed
    assert "thinking" not in stream.types[first_reasoning:]  # 8 tokens at 150 ms of reasoning


def test_a_websocket_gets_the_same_reasoning_frames(server: AppServer) -> None:
    with open_socket(server) as ws:
        send(ws, {"type": "chat", "request_id": "r1", "message": think("details")})
        frames = recv_until(ws, lambda got: any(f["type"] == "done" for f in got))
    kinds = [f["type"] for f in frames]
    assert kinds[1:9] == ["reasoning"] * 8
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert "".join(f["text"] for f in frames if f["type"] == "reasoning") == THOUGHT
    assert frames[-1]["usage"]["reasoning_tokens"] == 8
