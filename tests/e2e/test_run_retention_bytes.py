"""Ended runs are retained for replay within a byte budget too: the oldest go first."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx

from tests.support.servers import AppServer
from tests.support.sse import read_stream

# About 104 KB of events each: two fit in the budget below, three do not.
ANSWER = "[[fake tokens=100 token_chars=1000]] a long answer"
BUDGET = 260_000


def test_ended_runs_past_the_byte_budget_are_forgotten_oldest_first(
    make_server: Callable[..., AppServer],
) -> None:
    server = make_server(run_retention_bytes=BUDGET)
    registry = server.state.registry
    ids = []
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        for _ in range(4):
            answer = client.post("/api/chat", json={"message": ANSWER}).json()
            assert len(answer["message"]["content"]) == 100 * 1000
            ids.append(answer["message"]["id"])
        for message_id in ids[:2]:
            assert client.get(f"/api/runs/{message_id}/events").status_code == 404
            state = client.get(f"/api/runs/{message_id}").json()
            assert (state["status"], state["last_seq"]) == ("complete", None)  # from the database
        for message_id in ids[2:]:
            with client.stream("GET", f"/api/runs/{message_id}/events") as response:
                replay = read_stream(response)
            assert replay.done["status"] == "complete" and len(replay.text) == 100 * 1000
    assert 0 < registry.retained_bytes <= BUDGET
    assert [registry.local(uuid.UUID(i), "anonymous") is not None for i in ids] == [
        False,
        False,
        True,
        True,
    ]


def test_a_run_larger_than_the_budget_is_not_retained(
    make_server: Callable[..., AppServer],
) -> None:
    server = make_server(run_retention_bytes=50_000)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        answer = client.post("/api/chat", json={"message": ANSWER}).json()
        message_id = answer["message"]["id"]
        assert client.get(f"/api/runs/{message_id}/events").status_code == 404
        small = client.post("/api/chat", json={"message": "[[fake tokens=3]] short"}).json()
        with client.stream("GET", f"/api/runs/{small['message']['id']}/events") as response:
            assert read_stream(response).done["status"] == "complete"
        stored = client.get(f"/api/sessions/{answer['session_id']}/messages").json()["items"]
    assert stored[-1]["id"] == message_id and len(stored[-1]["content"]) == 100 * 1000
    assert server.state.registry.retained_bytes <= 50_000
