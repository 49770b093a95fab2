"""A session's live state (issue #25 item 3): `active_run`, its event stream, and `if_busy`.

Real uvicorn, the fake upstream over real HTTP (a `stall_after` directive
holds a run live until the test releases it), httpx for HTTP and SSE and the
`websockets` client for the WebSocket, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from alembic import command

from chatstream.cli import alembic_config
from tests.support.sentinels import SENTINEL_JWT_SECRET, make_token
from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.services import fresh_postgres_database, service_url
from tests.support.session_watch import Watcher
from tests.support.sse import SSEEvent, Stream, iter_sse, read_stream
from tests.support.wait import wait_until
from tests.support.ws import dones, open_socket, recv_until, send

STALLED = "[[fake tokens=6 stall_after=2]] hold on"
KEEPALIVE_S = 0.2

BOTH_DATABASES = pytest.mark.parametrize(
    "database_url",
    ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    indirect=True,
)


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The suite's SQLite file, or (param `postgres`) a fresh PostgreSQL database at head."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield f"sqlite+aiosqlite:///{request.getfixturevalue('database_path')}"
        return
    with fresh_postgres_database(service_url("CHATSTREAM_TEST_POSTGRES_URL")) as url:
        command.upgrade(alembic_config(url), "head")  # type: ignore[arg-type]
        yield url


@pytest.fixture
def server(make_server: Callable[..., AppServer]) -> AppServer:
    # Idle streams say so often: a watcher notices at once that its tab was closed.
    return make_server(keepalive_interval_s=KEEPALIVE_S)


def new_session(client: httpx.Client, **fields: Any) -> str:
    answer = client.post("/api/sessions", json=fields)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


@contextmanager
def live_run(client: httpx.Client, session_id: str, **fields: Any) -> Iterator[Iterator[Any]]:
    """A run held live in the session (at its stall); yields its event iterator."""
    with client.stream(
        "POST", "/api/chat/stream", json={"message": STALLED, "session_id": session_id, **fields}
    ) as response:
        assert response.status_code == 200, response.read()
        events = iter_sse(response)
        head = read_stream(events, stop_after=3)
        assert head.types == ["start", "delta", "delta"]

        def rest() -> Iterator[Any]:
            yield from head.events
            yield from events

        yield rest()


def chat(client: httpx.Client, session_id: str, message: str, **fields: Any) -> httpx.Response:
    with client.stream(
        "POST", "/api/chat/stream", json={"message": message, "session_id": session_id, **fields}
    ) as response:
        response.read()
        return response


def stream_of(response: httpx.Response) -> Stream:
    return read_stream(iter_sse(httpx.Response(200, content=response.content)))


def messages(client: httpx.Client, session_id: str) -> list[dict[str, Any]]:
    answer = client.get(f"/api/sessions/{session_id}/messages")
    assert answer.status_code == 200
    return list(answer.json()["items"])


def active_run(client: httpx.Client, session_id: str) -> Any:
    one = client.get(f"/api/sessions/{session_id}").json()["active_run"]
    listed = {item["id"]: item for item in client.get("/api/sessions").json()["items"]}
    assert listed[session_id]["active_run"] == one
    return one


# --- active_run --------------------------------------------------------------------


@BOTH_DATABASES
def test_a_session_says_which_run_is_live_in_it(
    server: AppServer, client: httpx.Client, fake: FakeUpstreamThread
) -> None:
    session_id = new_session(client)
    other = new_session(client)
    assert active_run(client, session_id) is None
    with live_run(client, session_id) as events:
        message_id = next(events).data["message_id"]
        assert active_run(client, session_id) == {"message_id": message_id}
        assert active_run(client, other) is None
        fake.fake.release(wait_for=1)
        assert read_stream(events).done["status"] == "complete"
    assert active_run(client, session_id) is None


# --- if_busy -----------------------------------------------------------------------


@BOTH_DATABASES
def test_a_message_sent_while_a_run_is_live_is_rejected_naming_that_run(
    server: AppServer, client: httpx.Client, fake: FakeUpstreamThread
) -> None:
    session_id = new_session(client)
    with live_run(client, session_id) as events:
        message_id = next(events).data["message_id"]
        for fields in ({}, {"if_busy": "reject"}):
            refused = chat(client, session_id, "and another thing", **fields)
            assert refused.status_code == 409
            error = httpx.Response(409, content=refused.content).json()["error"]
            assert error["code"] == "run_in_progress"
            assert error["details"] == {"message_id": message_id}
        fake.fake.release(wait_for=1)
        read_stream(events)
    # Refused leaving no trace: one question, one answer.
    assert [m["role"] for m in messages(client, session_id)] == ["user", "assistant"]
    # Once the run has ended, the session takes a new message.
    assert stream_of(chat(client, session_id, "now")).done["status"] == "complete"


def test_messages_sent_at_once_start_one_run(server: AppServer, fake: FakeUpstreamThread) -> None:
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        session_id = new_session(client)

    answered: list[int] = []

    def send_one(_: int) -> int:
        with (
            httpx.Client(base_url=server.base_url, timeout=20) as http,
            http.stream(
                "POST", "/api/chat/stream", json={"message": STALLED, "session_id": session_id}
            ) as response,
        ):
            answered.append(response.status_code)
            if response.status_code == 200:
                # Held live until every message has had its answer.
                wait_until(lambda: len(answered) == 6, what="every answer")
                fake.fake.release(wait_for=1)
            response.read()
            return response.status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = sorted(pool.map(send_one, range(6)))
    assert statuses == [200, 409, 409, 409, 409, 409]


@BOTH_DATABASES
def test_enqueue_answers_once_the_live_run_has_ended(
    server: AppServer, client: httpx.Client, fake: FakeUpstreamThread
) -> None:
    session_id = new_session(client)
    with live_run(client, session_id) as events:
        first_id = next(events).data["message_id"]
        with ThreadPoolExecutor(max_workers=1) as pool:
            queued = pool.submit(chat, client, session_id, "next, please", if_busy="enqueue")
            # Its request is on the server, waiting: the model was asked nothing for it.
            wait_until(lambda: len(server.connections()) >= 2, what="the queued request arrived")
            assert not queued.done()
            assert len(fake.fake.requests) == 1
            fake.fake.release(wait_for=1)
            first = Stream(events=[e for e in events if isinstance(e, SSEEvent)])
            second = stream_of(queued.result(timeout=20))
    assert first.done["status"] == "complete"
    assert second.types[0] == "start" and second.done["status"] == "complete"
    # It started after the first had ended: the model saw the whole first answer.
    asked = fake.fake.requests[-1]["messages"]
    assert {"role": "assistant", "content": first.text} in [
        {"role": m["role"], "content": m["content"]} for m in asked
    ]
    stored = messages(client, session_id)
    assert [(m["role"], m["id"]) for m in stored][1] == ("assistant", first_id)
    assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]


@BOTH_DATABASES
def test_interrupt_cancels_the_live_run_then_answers(
    server: AppServer, client: httpx.Client, fake: FakeUpstreamThread
) -> None:
    session_id = new_session(client)
    with live_run(client, session_id) as events:
        first_id = next(events).data["message_id"]
        second = stream_of(chat(client, session_id, "stop that, answer this", if_busy="interrupt"))
        first = read_stream(events)
    assert first.done["status"] == "cancelled"
    assert second.done["status"] == "complete"
    stored = {m["id"]: m for m in messages(client, session_id)}
    assert stored[first_id]["status"] == "cancelled"
    assert stored[second.done["message_id"]]["status"] == "complete"


def test_if_busy_is_validated(client: httpx.Client) -> None:
    session_id = new_session(client)
    answer = client.post(
        "/api/chat", json={"message": "hi", "session_id": session_id, "if_busy": "later"}
    )
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["code"] == "invalid_request"
    # A known field with a value out of its choices (not an unknown field).
    assert [(d["loc"], d["type"]) for d in error["details"]] == [
        (["body", "if_busy"], "literal_error")
    ]


def test_websocket_chat_frames_follow_if_busy(server: AppServer, fake: FakeUpstreamThread) -> None:
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        session_id = new_session(client)
    with open_socket(server) as ws:
        send(ws, {"type": "chat", "request_id": "a", "message": STALLED, "session_id": session_id})
        head = recv_until(ws, lambda frames: len(frames) >= 3)
        first_id = head[0]["message_id"]
        send(ws, {"type": "chat", "request_id": "b", "message": "hi", "session_id": session_id})
        refused = recv_until(ws, lambda frames: any(f["type"] == "error" for f in frames))[-1]
        assert refused["code"] == "run_in_progress"
        assert refused["request_id"] == "b"
        assert refused["details"] == {"message_id": first_id}
        send(
            ws,
            {
                "type": "chat",
                "request_id": "c",
                "message": "this instead",
                "session_id": session_id,
                "if_busy": "interrupt",
            },
        )
        frames = recv_until(ws, lambda frames: dones(frames) == 2)
    ends = {f["request_id"]: f["status"] for f in frames if f["type"] == "done"}
    assert ends == {"a": "cancelled", "c": "complete"}


def test_a_websocket_chat_frame_may_wait_its_turn(
    server: AppServer, fake: FakeUpstreamThread
) -> None:
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        session_id = new_session(client)
        with open_socket(server) as ws:
            send(
                ws,
                {"type": "chat", "request_id": "a", "message": STALLED, "session_id": session_id},
            )
            recv_until(ws, lambda frames: len(frames) >= 3)
            queued = {"type": "chat", "request_id": "b", "message": "then this"}
            send(ws, {**queued, "session_id": session_id, "if_busy": "enqueue"})
            send(ws, {"type": "ping", "request_id": "p"})  # frames are read in order
            pong = recv_until(ws, lambda frames: any(f["type"] == "pong" for f in frames))
            assert [f for f in pong if f.get("request_id") == "b"] == []  # b waits, silently
            assert len(fake.fake.requests) == 1
            fake.fake.release(wait_for=1)
            frames = recv_until(ws, lambda frames: dones(frames) == 2)
        ends = {f["request_id"]: f["status"] for f in frames if f["type"] == "done"}
        assert ends == {"a": "complete", "b": "complete"}
        roles = [m["role"] for m in messages(client, session_id)]
    assert roles == ["user", "assistant", "user", "assistant"]


# --- the session's events --------------------------------------------------------------


@BOTH_DATABASES
def test_a_second_tab_hears_runs_start_and_end_and_the_title(
    server: AppServer, client: httpx.Client, fake: FakeUpstreamThread
) -> None:
    session_id = new_session(client)
    with Watcher(server.base_url, session_id) as tab:
        assert tab.status == 200 and tab.content_type.startswith("text/event-stream")
        with live_run(client, session_id) as events:
            message_id = next(events).data["message_id"]
            started = tab.seen(lambda es: len(es) >= 1, "run.started")
            assert started[0].event == "run.started"
            assert started[0].data == {
                "type": "run.started",
                "session_id": session_id,
                "message_id": message_id,
            }
            fake.fake.release(wait_for=1)
            read_stream(events)
        seen = tab.seen(
            lambda es: {"run.ended", "session.updated"} <= {e.type for e in es}, "end, title"
        )
        ended = next(e for e in seen if e.type == "run.ended")
        assert ended.data == {
            "type": "run.ended",
            "session_id": session_id,
            "message_id": message_id,
            "status": "complete",
        }
        titled = next(e for e in seen if e.type == "session.updated").data
        session = client.get(f"/api/sessions/{session_id}").json()
        assert titled["title"] == session["title"] == STALLED
        # A change made elsewhere is heard too.
        assert client.patch(f"/api/sessions/{session_id}", json={"title": "Renamed"}).is_success
        renamed = tab.seen(lambda es: es[-1].data.get("title") == "Renamed", "the rename")[-1]
        assert renamed.type == "session.updated"
        assert renamed.data["system_prompt"] is None
        # Deleting the session ends its stream.
        assert client.delete(f"/api/sessions/{session_id}").status_code == 204
        assert tab.ended.wait(10)
    assert tab.types[-1] == "session.deleted"


def test_a_tab_that_connects_mid_run_is_told_of_the_live_run_first(
    server: AppServer, client: httpx.Client, fake: FakeUpstreamThread
) -> None:
    session_id = new_session(client, title="Set")
    with live_run(client, session_id) as events:
        message_id = next(events).data["message_id"]
        with Watcher(server.base_url, session_id) as late:
            first = late.seen(lambda es: len(es) >= 1, "the live run")[0]
            assert (first.type, first.data["message_id"]) == ("run.started", message_id)
            # It can follow that run.
            fake.fake.release(wait_for=1)
            late.seen(lambda es: "run.ended" in [e.type for e in es], "run.ended")
            read_stream(events)
    # Announced once, though its own run.started may also have been on the way.
    assert late.types[:2] == ["run.started", "run.ended"]
    assert late.types.count("run.started") == 1


def test_an_idle_session_stream_keeps_alive(make_server: Callable[..., AppServer]) -> None:
    server = make_server(keepalive_interval_s=0.1)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        session_id = new_session(client)
    with Watcher(server.base_url, session_id) as tab:
        wait_until(lambda: len(tab.comments) >= 2, what="two keepalives")
    assert set(tab.comments) == {": keepalive"}
    assert tab.events == []


def test_only_the_owner_may_watch_a_session(make_server: Callable[..., AppServer]) -> None:
    server = make_server(auth="jwt", jwt_secret=SENTINEL_JWT_SECRET, keepalive_interval_s=0.2)
    alice = {"Authorization": f"Bearer {make_token('alice')}"}
    bob = {"Authorization": f"Bearer {make_token('bob')}"}
    with httpx.Client(base_url=server.base_url, timeout=20, headers=alice) as client:
        session_id = new_session(client)
        with Watcher(server.base_url, session_id, headers=alice) as own:
            assert own.status == 200
    for headers, path in ((bob, session_id), (alice, str(uuid.uuid4()))):
        answer = httpx.get(f"{server.base_url}/api/sessions/{path}/events", headers=headers)
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "not_found"
    anonymous = httpx.get(f"{server.base_url}/api/sessions/{session_id}/events")
    assert anonymous.status_code == 401


def test_the_model_s_title_is_announced_once_set(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    server = make_server(auto_title="model", keepalive_interval_s=KEEPALIVE_S)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        session_id = new_session(client)
        with Watcher(server.base_url, session_id) as tab:
            assert stream_of(chat(client, session_id, "name this")).done["status"] == "complete"
            seen = tab.seen(lambda es: "session.updated" in [e.type for e in es], "the title")
            titled = next(e for e in seen if e.type == "session.updated").data
            stored_title = client.get(f"/api/sessions/{session_id}").json()["title"]
    assert titled["title"] == stored_title and stored_title
    assert [e.type for e in seen][:2] == ["run.started", "run.ended"]
