"""`client_message_id`: a repeated request starts no second run and gets the first one's stream."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.support.sentinels import SENTINEL_JWT_SECRET, TOKEN_ALICE, TOKEN_BOB
from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.sse import Stream, read_stream
from tests.support.ws import dones, open_socket, recv_until, send


def stream(server: AppServer, body: dict[str, Any], token: str | None = None) -> Stream:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with (
        httpx.Client(base_url=server.base_url, timeout=30, headers=headers) as client,
        client.stream("POST", "/api/chat/stream", json=body) as response,
    ):
        assert response.status_code == 200, response.read()
        return read_stream(response)


def rows(database: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(database) as db:
        return db.execute("select role, status from messages order by pk").fetchall()


def test_a_sequential_repeat_replays_the_first_run(
    server: AppServer, fake: FakeUpstreamThread, database_path: Path
) -> None:
    body = {"message": "[[fake tokens=12]] once", "client_message_id": "k-1"}
    first = stream(server, body)
    again = stream(server, body)
    assert [e.data for e in again.events] == [e.data for e in first.events]
    assert [e.id for e in again.events] == [e.id for e in first.events]
    assert rows(database_path) == [("user", "complete"), ("assistant", "complete")]
    assert len(fake.fake.requests) == 1


def test_concurrent_repeats_start_one_run_and_both_get_the_whole_stream(
    server: AppServer, fake: FakeUpstreamThread, database_path: Path
) -> None:
    body = {"message": "[[fake tokens=20 interval_ms=10]] together", "client_message_id": "k-2"}
    results: list[Stream] = []
    go = threading.Barrier(2)

    def client() -> None:
        go.wait()
        results.append(stream(server, body))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 2
    one, two = results
    assert one.done["message_id"] == two.done["message_id"]
    assert [e.data for e in one.events] == [e.data for e in two.events]
    assert one.types.count("delta") == 20
    assert rows(database_path) == [("user", "complete"), ("assistant", "complete")]
    assert len(fake.fake.requests) == 1


def test_a_repeat_over_another_transport_follows_the_same_run(
    server: AppServer, fake: FakeUpstreamThread, database_path: Path
) -> None:
    first = stream(server, {"message": "[[fake tokens=5]] hi", "client_message_id": "k-3"})
    answer = httpx.post(
        f"{server.base_url}/api/chat",
        json={"message": "[[fake tokens=5]] hi", "client_message_id": "k-3"},
    ).json()
    assert answer["message"]["id"] == first.done["message_id"]
    assert answer["message"]["content"] == first.text
    with open_socket(server) as ws:
        send(
            ws,
            {
                "type": "chat",
                "request_id": "again",
                "message": "[[fake tokens=5]] hi",
                "client_message_id": "k-3",
            },
        )
        frames = recv_until(ws, lambda fs: dones(fs) == 1)
    assert {f["message_id"] for f in frames} == {first.done["message_id"]}
    assert all(f["request_id"] == "again" for f in frames)
    assert "".join(f["text"] for f in frames if f["type"] == "delta") == first.text
    assert len(rows(database_path)) == 2


def test_after_retention_a_repeat_gets_the_saved_answer(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    server = make_server(run_retention_s=0)
    first = stream(server, {"message": "[[fake tokens=8]] old", "client_message_id": "k-4"})

    async def forgotten() -> None:
        import asyncio

        while server.state.registry.known_count:
            await asyncio.sleep(0.01)

    server.call(forgotten)
    again = stream(server, {"message": "[[fake tokens=8]] old", "client_message_id": "k-4"})
    assert again.types == ["start", "delta", "done"]
    assert again.text == first.text
    assert again.done["message_id"] == first.done["message_id"]
    assert again.done["status"] == "complete" and again.done["persisted"] is True
    assert again.events[0].data["user_message_id"] == first.events[0].data["user_message_id"]


def test_a_replay_from_storage_holds_every_round(
    make_server: Callable[..., AppServer], database_path: Path
) -> None:
    server = make_server(run_retention_s=0)
    body = {
        "message": "[[fake tool=get_current_time preamble=3 tokens=4]] what time?",
        "client_message_id": "k-tools",
    }
    first = stream(server, body)
    assert first.of("tool_call") and first.of("tool_result")

    async def forgotten() -> None:
        import asyncio

        while server.state.registry.known_count:
            await asyncio.sleep(0.01)

    server.call(forgotten)
    again = stream(server, body)
    live_types = [t for t in first.types if t not in ("thinking", "delta")]
    assert [t for t in again.types if t != "delta"] == live_types
    assert again.text == first.text
    with sqlite3.connect(database_path) as db:
        stored = "".join(
            row[0]
            for row in db.execute(
                "select content from messages where role = 'assistant' order by pk"
            )
        )
    assert again.text == stored
    for kind in ("tool_call", "tool_result"):
        assert [e.data for e in again.of(kind)] == [e.data for e in first.of(kind)]
    assert again.done == first.done


def test_keys_belong_to_their_owner(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    server = make_server(auth="jwt", jwt_secret=SENTINEL_JWT_SECRET)
    alice = stream(
        server, {"message": "[[fake tokens=2]] a", "client_message_id": "same"}, TOKEN_ALICE
    )
    bob = stream(server, {"message": "[[fake tokens=3]] b", "client_message_id": "same"}, TOKEN_BOB)
    assert alice.done["message_id"] != bob.done["message_id"]
    assert len(fake.fake.requests) == 2


def test_a_repeat_costs_no_limit(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    server = make_server(rate_limit="1/minute")
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        body = {"message": "[[fake tokens=2]] a", "client_message_id": "k-5"}
        assert client.post("/api/chat", json=body).status_code == 200
        repeat = client.post("/api/chat", json=body)
        assert repeat.status_code == 200
        assert repeat.headers["x-ratelimit-remaining"] == "0"
        assert client.post("/api/chat", json={"message": "new"}).status_code == 429


def test_a_socket_closing_mid_start_never_leaves_a_key_without_its_answer(
    server: AppServer, database_path: Path
) -> None:
    """Committing the user message and launching its run are never split by a cancel."""
    keys = [f"closing-{n}" for n in range(30)]
    for key in keys:
        with open_socket(server) as ws:
            send(
                ws,
                {
                    "type": "chat",
                    "request_id": key,
                    "message": "[[fake tokens=3]] q",
                    "client_message_id": key,
                },
            )
        # The socket is closed at once: its task group, the chat start included, is cancelled.
    for key in keys:
        again = stream(server, {"message": "[[fake tokens=3]] q", "client_message_id": key})
        assert again.done["status"] == "complete", (key, again.types)
    with sqlite3.connect(database_path) as db:
        users = db.execute("select count(*) from messages where role = 'user'").fetchone()[0]
    assert users == len(keys)


def test_a_repeat_finishes_a_reply_that_was_never_launched(
    server: AppServer, database_path: Path
) -> None:
    """A key left by a start cut off between commit and launch is answered, not 409 forever."""
    session = httpx.post(f"{server.base_url}/api/sessions", json={}).json()["id"]
    reply_id = uuid.uuid4()
    with sqlite3.connect(database_path) as db:
        db.execute(
            "insert into messages (id, session_id, owner, role, content, status, created_at,"
            " client_message_id, reply_id) values (?, ?, 'anonymous', 'user', 'q', 'complete',"
            " '2026-01-01 00:00:00', 'stuck', ?)",
            (uuid.uuid4().hex, uuid.UUID(session).hex, reply_id.hex),
        )
    first = stream(server, {"message": "q", "client_message_id": "stuck"})
    assert first.types == ["start", "error", "done"]
    assert first.done["message_id"] == str(reply_id)
    assert first.done["status"] == "interrupted"
    assert stream(server, {"message": "q", "client_message_id": "stuck"}).types == first.types
    with sqlite3.connect(database_path) as db:
        answers = db.execute("select status from messages where id = ?", (reply_id.hex,)).fetchall()
    assert answers == [("interrupted",)]


def test_a_reused_key_with_another_message_is_idempotency_conflict_on_a_socket(
    server: AppServer,
) -> None:
    stream(server, {"message": "[[fake tokens=2]] first", "client_message_id": "k-ws"})
    with open_socket(server) as ws:
        send(
            ws,
            {
                "type": "chat",
                "request_id": "again",
                "message": "another",
                "client_message_id": "k-ws",
            },
        )
        error = recv_until(ws, lambda fs: bool(fs))[-1]
    assert (error["type"], error["code"], error["request_id"]) == (
        "error",
        "idempotency_conflict",
        "again",
    )
