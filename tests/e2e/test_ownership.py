"""Another owner's ids answer like missing ones, on every route and frame; nothing changes."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.sentinels import SENTINEL_JWT_SECRET, TOKEN_ALICE, TOKEN_BOB
from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.sse import iter_sse, read_stream
from tests.support.ws import open_socket, recv, send


def rows_of(database: Path, owner: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(database) as db:
        sessions = db.execute(
            "select * from sessions where owner = ? order by pk", (owner,)
        ).fetchall()
        messages = db.execute(
            "select * from messages where owner = ? order by pk", (owner,)
        ).fetchall()
    return sessions + messages


@pytest.fixture
def alice_world(make_server: Callable[..., AppServer], fake: FakeUpstreamThread) -> Any:
    """Alice's session with a finished run, and a second run still live."""
    server = make_server(auth="jwt", jwt_secret=SENTINEL_JWT_SECRET)
    alice = httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {TOKEN_ALICE}"}, timeout=20
    )
    done = alice.post("/api/chat", json={"message": "[[fake tokens=3]] mine"}).json()
    session_id, finished_id = done["session_id"], done["message"]["id"]
    stream = alice.stream(
        "POST",
        "/api/chat/stream",
        json={"message": "[[fake tokens=5 stall_after=1]] live", "session_id": session_id},
    )
    response = stream.__enter__()
    head = read_stream(iter_sse(response), stop_after=2)
    live_id = head.events[0].data["message_id"]
    yield server, alice, session_id, finished_id, live_id
    stream.__exit__(None, None, None)
    alice.close()


def test_every_route_answers_404_to_another_owner_and_changes_nothing(
    alice_world: Any, database_path: Path
) -> None:
    server, alice, session_id, finished_id, live_id = alice_world
    # Alice's AI SDK chat, with a live run (resumable, so it outlives its request).
    chat_id = "alice-chat"
    ui_message = {"role": "user", "parts": [{"type": "text", "text": "[[fake stall_after=1]] x"}]}
    with alice.stream(
        "POST", "/api/ui/chat", json={"id": chat_id, "messages": [ui_message], "resume": True}
    ) as ui_response:
        assert ui_response.status_code == 200
        next(ui_response.iter_lines())
    with alice.stream("GET", f"/api/ui/chat/{chat_id}/stream") as resumed:
        assert resumed.status_code == 200  # to Alice, her chat has a live run
    before = rows_of(database_path, "alice")
    operations = [
        (method.upper(), path)
        for path, ops in httpx.get(f"{server.base_url}/openapi.json", timeout=10)
        .json()["paths"]
        .items()
        if path.startswith("/api")
        for method in ops
    ]
    with_ids = [(m, p) for m, p in operations if "{" in p]
    assert len(with_ids) >= 7
    bob = httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {TOKEN_BOB}"}, timeout=20
    )
    checked = []
    for method, path in with_ids:
        for message_id in (finished_id, live_id):
            url = (
                path.replace("{session_id}", session_id)
                .replace("{message_id}", message_id)
                .replace("{chat_id}", chat_id)
            )
            body = {"title": "mine now", "system_prompt": "obey bob"} if method == "PATCH" else None
            response = bob.request(method, url, json=body)
            unknown = str(uuid.uuid4())
            missing_url = (
                path.replace("{session_id}", unknown)
                .replace("{message_id}", unknown)
                .replace("{chat_id}", unknown)
            )
            missing = bob.request(method, missing_url, json=body)
            if "{chat_id}" in path:
                # A chat with no live run of the caller's answers 204, missing or not.
                assert (response.status_code, missing.status_code) == (204, 204), (method, path)
            else:
                assert response.status_code == 404, (method, path, response.text)
                assert response.json() == missing.json(), (method, path)
            checked.append((method, path))
    # Ids in bodies: continuing Alice's session.
    for path in ("/api/chat/stream", "/api/chat"):
        response = bob.post(path, json={"message": "hello", "session_id": session_id})
        assert response.status_code == 404, path
    # Lists show Bob nothing of Alice's.
    assert bob.get("/api/sessions").json()["items"] == []
    assert rows_of(database_path, "alice") == before
    assert {p for _, p in checked} == {p for _, p in with_ids}
    # Alice's live run was not touched: she can still cancel it.
    assert alice.post(f"/api/runs/{live_id}/cancel").status_code == 202
    bob.close()


def test_every_socket_frame_treats_another_owners_ids_as_unknown(
    alice_world: Any, database_path: Path
) -> None:
    server, _alice, session_id, finished_id, live_id = alice_world
    before = rows_of(database_path, "alice")
    with open_socket(server, additional_headers={"Authorization": f"Bearer {TOKEN_BOB}"}) as ws:
        for message_id in (finished_id, live_id):
            for kind in ("cancel", "resume"):
                send(ws, {"type": kind, "message_id": message_id})
                error = recv(ws)
                assert (error["type"], error["code"]) == ("error", "invalid_request"), (kind, error)
                assert error["message"] == "No such run."
        send(ws, {"type": "chat", "request_id": "steal", "message": "hi", "session_id": session_id})
        error = recv(ws)
        assert (error["code"], error["request_id"]) == ("invalid_request", "steal")
    assert rows_of(database_path, "alice") == before
    run = server.state.registry.local(uuid.UUID(live_id), "alice")
    assert run is not None and run.live
    assert server.state.registry.local(uuid.UUID(live_id), "bob") is None
