"""Sessions, messages, non-streaming chat, run state, models, health and OpenAPI."""

from __future__ import annotations

import re
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.sse import iter_sse, read_stream


def test_session_crud(client: httpx.Client) -> None:
    created = client.post(
        "/api/sessions",
        json={"title": "Plans", "model": "other-model", "system_prompt": "Be kind."},
    )
    assert created.status_code == 201
    session = created.json()
    assert session["owner"] == "anonymous"
    assert (session["title"], session["model"], session["system_prompt"]) == (
        "Plans",
        "other-model",
        "Be kind.",
    )

    fetched = client.get(f"/api/sessions/{session['id']}").json()
    assert fetched["message_count"] == 0
    assert fetched["id"] == session["id"]

    patched = client.patch(
        f"/api/sessions/{session['id']}", json={"title": "Renamed", "system_prompt": None}
    )
    assert patched.status_code == 200
    assert patched.json()["title"] == "Renamed"
    assert patched.json()["system_prompt"] is None
    assert patched.json()["model"] == "other-model"
    assert patched.json()["updated_at"] >= session["updated_at"]

    assert client.delete(f"/api/sessions/{session['id']}").status_code == 204
    assert client.get(f"/api/sessions/{session['id']}").status_code == 404
    assert client.delete(f"/api/sessions/{session['id']}").status_code == 404


def test_deleting_a_session_deletes_its_messages(client: httpx.Client, database_path: Path) -> None:
    answer = client.post("/api/chat", json={"message": "[[fake tokens=2]] hi"}).json()
    session_id = answer["session_id"]
    assert client.get(f"/api/sessions/{session_id}").json()["message_count"] == 2
    assert client.delete(f"/api/sessions/{session_id}").status_code == 204
    import sqlite3

    with sqlite3.connect(database_path) as db:
        assert db.execute("select count(*) from messages").fetchone()[0] == 0


def test_sessions_are_listed_newest_first_with_cursor_pagination(client: httpx.Client) -> None:
    ids = [client.post("/api/sessions", json={"title": f"s{i}"}).json()["id"] for i in range(7)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/sessions", params=params).json()
        seen.extend(item["id"] for item in page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    assert pages == 3
    assert client.get("/api/sessions").json()["next_cursor"] is None


def test_messages_page_backwards_with_before(client: httpx.Client) -> None:
    session_id = None
    for turn in range(3):
        body: dict[str, Any] = {"message": f"m{turn} [[fake tokens=1]]"}
        if session_id:
            body["session_id"] = session_id
        session_id = client.post("/api/chat", json=body).json()["session_id"]
    everything = client.get(f"/api/sessions/{session_id}/messages").json()
    assert [m["role"] for m in everything["items"]] == ["user", "assistant"] * 3
    assert everything["next_cursor"] is None

    newest = client.get(f"/api/sessions/{session_id}/messages", params={"limit": 4}).json()
    assert newest["items"] == everything["items"][2:]
    assert newest["next_cursor"] == everything["items"][2]["id"]
    older = client.get(
        f"/api/sessions/{session_id}/messages", params={"limit": 4, "before": newest["next_cursor"]}
    ).json()
    assert older["items"] == everything["items"][:2]
    assert older["next_cursor"] is None


def test_non_streaming_chat_returns_the_persisted_answer(client: httpx.Client) -> None:
    response = client.post("/api/chat", json={"message": "[[fake tokens=9]] hello"})
    assert response.status_code == 200
    body = response.json()
    message = body["message"]
    assert message["role"] == "assistant" and message["status"] == "complete"
    assert message["content"].count(" ") == 9
    stored = client.get(f"/api/sessions/{body['session_id']}/messages").json()["items"][-1]
    # The listing adds where the message stands among its siblings; the rest is the same.
    branch = {"sibling_ids": [message["id"]], "sibling_index": 0, "sibling_count": 1}
    assert stored == {**message, **branch}


def test_non_streaming_chat_reports_upstream_failure_with_the_partial(client: httpx.Client) -> None:
    response = client.post("/api/chat", json={"message": "[[fake tokens=9 drop_after=3]] hello"})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_error"
    assert error["details"]["message"]["status"] == "error"
    assert error["details"]["message"]["content"].count(" ") == 3
    session_id = error["details"]["session_id"]
    stored = client.get(f"/api/sessions/{session_id}/messages").json()["items"][-1]
    assert stored["content"] == error["details"]["message"]["content"]


def test_run_state_while_running_and_after(client: httpx.Client, fake: FakeUpstreamThread) -> None:
    from tests.support.sse import iter_sse, read_stream

    with client.stream(
        "POST", "/api/chat/stream", json={"message": "[[fake tokens=4 stall_after=2]] hi"}
    ) as response:
        events = iter_sse(response)
        head = read_stream(events, stop_after=3)
        message_id = head.events[0].data["message_id"]
        live = client.get(f"/api/runs/{message_id}").json()
        assert live["status"] == "running"
        assert live["last_seq"] >= 3
        assert live["session_id"] == head.events[0].data["session_id"]
        fake.fake.release(wait_for=1)
        rest = read_stream(events)
    ended = client.get(f"/api/runs/{message_id}").json()
    assert ended["status"] == "complete"
    assert ended["last_seq"] == rest.events[-1].id


def test_run_state_after_retention_comes_from_the_database(make_server: Any) -> None:
    server: AppServer = make_server(run_retention_s=0)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        message_id = client.post("/api/chat", json={"message": "[[fake tokens=2]] hi"}).json()[
            "message"
        ]["id"]
        server.call(_no_op)  # let the retention timer fire on the server's loop
        assert server.state.registry.local(uuid.UUID(message_id), "anonymous") is None
        state = client.get(f"/api/runs/{message_id}").json()
        assert (state["status"], state["last_seq"]) == ("complete", None)
        assert client.get(f"/api/runs/{message_id}/events").status_code == 404
        assert client.post(f"/api/runs/{message_id}/cancel").status_code == 409


async def _no_op() -> None:
    import asyncio

    await asyncio.sleep(0.01)


def test_models_endpoint(client: httpx.Client) -> None:
    assert client.get("/api/models").json() == {
        "default": "test-model",
        "demo": False,
        "items": [{"id": "test-model"}, {"id": "other-model"}],
    }


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    instance = body.pop("instance")
    assert body == {"status": "ready", "database": "ok", "live_runs": 0, "spooled_runs": 0}
    # This instance's id, the same on every answer; named in a header only when
    # several instances serve as one (CHATSTREAM_REDIS_URL).
    assert re.fullmatch(r"[0-9a-f]{32}", instance)
    assert client.get("/readyz").json()["instance"] == instance
    assert "x-chatstream-instance" not in ready.headers


def test_readiness_fails_when_the_schema_is_not_current(
    server: AppServer, database_path: Path
) -> None:
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        assert client.get("/readyz").json()["database"] == "ok"
        # Someone rolls the schema back under the running server.
        with sqlite3.connect(database_path) as db:
            db.execute("UPDATE alembic_version SET version_num = '0001'")
        ready = client.get("/readyz")
    assert ready.status_code == 503
    assert (ready.json()["status"], ready.json()["database"]) == ("unavailable", "outdated")


def test_request_id_is_echoed_or_made_up(client: httpx.Client) -> None:
    assert (
        client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"]
        == "abc-123"
    )
    made_up = client.get("/healthz", headers={"X-Request-ID": "bad id; drop"}).headers[
        "x-request-id"
    ]
    assert made_up != "bad id; drop" and len(made_up) == 32


def test_openapi_documents_every_endpoint_and_the_sse_events(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    expected = {
        ("/api/chat/stream", "post"),
        ("/api/chat", "post"),
        ("/api/runs/{message_id}/events", "get"),
        ("/api/runs/{message_id}/cancel", "post"),
        ("/api/runs/{message_id}", "get"),
        ("/api/sessions", "post"),
        ("/api/sessions", "get"),
        ("/api/sessions/{session_id}", "get"),
        ("/api/sessions/{session_id}", "patch"),
        ("/api/sessions/{session_id}", "delete"),
        ("/api/sessions/{session_id}/messages", "get"),
        ("/api/models", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    }
    documented = {(path, method) for path, ops in paths.items() for method in ops}
    assert expected <= documented
    for path in ("/api/chat/stream", "/api/runs/{message_id}/events"):
        op = next(iter(paths[path].values()))
        content = op["responses"]["200"]["content"]
        assert list(content) == ["text/event-stream"]
        item = content["text/event-stream"]["itemSchema"]
        assert item["properties"]["data"]["contentSchema"] == {
            "$ref": "#/components/schemas/StreamEvent"
        }
    schemas = spec["components"]["schemas"]
    for event in (
        "StartEvent",
        "ThinkingEvent",
        "DeltaEvent",
        "ToolCallEvent",
        "ToolResultEvent",
        "ErrorEvent",
        "DoneEvent",
        "ReasoningEvent",
    ):
        assert event in schemas
    mapping = schemas["StreamEvent"]["discriminator"]["mapping"]
    assert set(mapping) == {
        "start",
        "thinking",
        "reasoning",
        "delta",
        "tool_call",
        "tool_result",
        "error",
        "done",
    }
    chat_request = schemas["ChatRequest"]
    assert chat_request["additionalProperties"] is False
    assert chat_request["properties"]["message"]["maxLength"] == 4000
    assert client.get("/docs").status_code == 200


def test_openapi_describes_the_websocket_protocol(client: httpx.Client) -> None:
    description = client.get("/openapi.json").json()["info"]["description"]
    for needle in ("/ws/chat", '"type":"chat"', '"type":"resume"', '"type":"pong"', "1009", "403"):
        assert needle in description


def test_deleting_a_session_cancels_its_live_runs_and_keeps_nothing(
    server: AppServer, fake: FakeUpstreamThread, database_path: Path, spool_dir: Path
) -> None:
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        with client.stream(
            "POST", "/api/chat/stream", json={"message": "[[fake tokens=6 stall_after=2]] x"}
        ) as response:
            events = iter_sse(response)
            head = read_stream(events, stop_after=3)
            session_id = head.events[0].data["session_id"]
            assert client.delete(f"/api/sessions/{session_id}").status_code == 204
            rest = read_stream(events)
        done = rest.done
    assert (done["status"], done["persisted"]) == ("cancelled", False)
    assert not list((spool_dir / "pending").glob("*.json"))
    import sqlite3

    with sqlite3.connect(database_path) as db:
        assert db.execute("select count(*) from messages").fetchone()[0] == 0
