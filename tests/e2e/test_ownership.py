"""Another owner's ids answer like missing ones, on every route and frame; nothing changes.

And no token can be an owner chatstream keeps for itself (a Telegram chat's, auth off's).
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.fake_telegram import FakeTelegram
from tests.support.sentinels import (
    SENTINEL_JWT_SECRET,
    SENTINEL_TELEGRAM_TOKEN,
    TOKEN_ALICE,
    TOKEN_BOB,
    make_token,
)
from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.sse import iter_sse, read_stream
from tests.support.wait import wait_until
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


# A valid body for the routes that need one (by method and last path segment), so that
# what answers is the ownership check. An empty `message_id` is the path's.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("PATCH", "{session_id}"): {"title": "mine now", "system_prompt": "obey bob"},
    ("POST", "edit"): {"content": "bob's words now"},
    ("PUT", "active-branch"): {"message_id": ""},
}


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
            body = BODIES.get((method, path.rsplit("/", 1)[-1]), {}).copy() or None
            if body and body.get("message_id") == "":
                body["message_id"] = message_id
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


# --- owners chatstream keeps for itself ----------------------------------------------------

TELEGRAM_SECRET = "webhook-secret_0123456789"
TELEGRAM_CHAT = 5151


@pytest.fixture
def telegram() -> Iterator[FakeTelegram]:
    fake = FakeTelegram(SENTINEL_TELEGRAM_TOKEN).start()
    yield fake
    fake.stop()


def refused_as_reserved(response: httpx.Response) -> None:
    """401 `reserved_subject`, saying what to do; in OpenAI's shape under /v1."""
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["code"] == "reserved_subject"
    assert "issue the token with another subject" in error["message"]
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def socket_is_refused(server: AppServer, token: str) -> None:
    """Closed 1008 (auth failed), with the token in the header or in the first frame."""
    for how in ("header", "frame"):
        headers = {"additional_headers": {"Authorization": f"Bearer {token}"}}
        with open_socket(server, **(headers if how == "header" else {})) as ws:
            if how == "frame":
                send(ws, {"type": "auth", "token": token})
            with pytest.raises(ConnectionClosed) as closed:
                recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008, how


def test_a_token_cannot_name_a_telegram_chats_owner(
    telegram: FakeTelegram, make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    # `telegram` first, so that it stops after the server (its delivery ends first).
    server = make_server(
        auth="jwt",
        jwt_secret=SENTINEL_JWT_SECRET,
        telegram_bot_token=SENTINEL_TELEGRAM_TOKEN,
        telegram_webhook_secret=TELEGRAM_SECRET,
        telegram_api_base=telegram.base_url,
    )
    owner = f"telegram:{TELEGRAM_CHAT}"
    update = {
        "update_id": 1,
        "message": {
            "message_id": 1,
            "date": int(time.time()),
            "chat": {"id": TELEGRAM_CHAT, "type": "private"},
            "from": {"id": TELEGRAM_CHAT, "is_bot": False, "first_name": "Test"},
            "text": "[[fake tokens=3]] my private question",
        },
    }
    webhook = httpx.post(
        f"{server.base_url}/telegram/webhook",
        json=update,
        headers={"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET},
        timeout=10,
    )
    assert webhook.status_code == 200
    store = server.state.store

    def chat_rows() -> list[Any]:
        page = server.call(lambda: store.list_sessions(owner, limit=10, cursor=None))
        if not page.items:
            return []
        session = page.items[0]
        messages = server.call(
            lambda: store.list_messages(owner, session.id, limit=50, before=None)
        ).items
        return [session, *messages]

    def answered() -> list[Any] | None:
        rows = chat_rows()
        return rows if [m.role for m in rows[1:]] == ["user", "assistant"] else None

    rows = wait_until(answered, timeout=20, what="the Telegram chat's answer is persisted")
    session_id, answer_id = str(rows[0].id), str(rows[2].id)
    before = [(row.id, getattr(row, "title", None), getattr(row, "content", None)) for row in rows]

    forged = make_token(owner)
    with httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {forged}"}, timeout=20
    ) as intruder:
        for method, path, body in [
            ("GET", "/api/sessions", None),
            ("GET", f"/api/sessions/{session_id}", None),
            ("GET", f"/api/sessions/{session_id}/messages", None),
            ("PATCH", f"/api/sessions/{session_id}", {"title": "mine now"}),
            ("DELETE", f"/api/sessions/{session_id}", None),
            ("POST", "/api/chat", {"message": "and now?", "session_id": session_id}),
            ("POST", "/api/chat/stream", {"message": "and now?", "session_id": session_id}),
            ("GET", f"/api/runs/{answer_id}", None),
            ("GET", f"/api/runs/{answer_id}/events", None),
        ]:
            refused_as_reserved(intruder.request(method, path, json=body))
        continued = intruder.post(
            "/v1/chat/completions",
            json={"model": "test-model", "messages": [{"role": "user", "content": "and now?"}]},
            headers={"X-Chatstream-Session-Id": session_id},
        )
        refused_as_reserved(continued)
    socket_is_refused(server, forged)

    after = [(r.id, getattr(r, "title", None), getattr(r, "content", None)) for r in chat_rows()]
    assert after == before
    # Other subjects are owners as before, and see nothing of the chat's.
    for subject in (
        "alice",
        "telegram",
        f"Telegram:{TELEGRAM_CHAT}",
        f"x-telegram:{TELEGRAM_CHAT}",
    ):
        headers = {"Authorization": f"Bearer {make_token(subject)}"}
        listed = httpx.get(f"{server.base_url}/api/sessions", headers=headers, timeout=10)
        assert (listed.status_code, listed.json()["items"]) == (200, []), subject
        one = httpx.get(f"{server.base_url}/api/sessions/{session_id}", headers=headers, timeout=10)
        assert one.status_code == 404, subject


def test_a_token_cannot_name_the_owner_of_auth_off(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread, tmp_path: Path
) -> None:
    """A database used with auth off, then with JWT: `anonymous`'s sessions stay out of reach."""
    open_server = make_server()
    created = httpx.post(f"{open_server.base_url}/api/sessions", json={"title": "t"}, timeout=10)
    session_id = created.json()["id"]
    server = make_server(auth="jwt", jwt_secret=SENTINEL_JWT_SECRET, spool_dir=tmp_path / "spool2")
    forged = make_token("anonymous")
    headers = {"Authorization": f"Bearer {forged}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=20) as intruder:
        refused_as_reserved(intruder.get("/api/sessions"))
        refused_as_reserved(intruder.get(f"/api/sessions/{session_id}"))
    socket_is_refused(server, forged)
    assert httpx.get(f"{open_server.base_url}/api/sessions/{session_id}", timeout=10).is_success
