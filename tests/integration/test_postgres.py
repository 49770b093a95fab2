"""The whole chat path on real PostgreSQL (asyncpg), schema from Alembic."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.support.servers import AppServer
from tests.support.sse import read_stream


def test_chat_persists_on_postgres(
    make_server: Callable[..., AppServer], postgres_url: str
) -> None:
    server = make_server(database_url=postgres_url)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        with client.stream(
            "POST", "/api/chat/stream", json={"message": "[[fake tokens=30]] on postgres"}
        ) as response:
            stream = read_stream(response)
        assert stream.done["status"] == "complete" and stream.done["persisted"] is True
        session_id = stream.events[0].data["session_id"]
        items = client.get(f"/api/sessions/{session_id}/messages").json()["items"]
        assert [m["role"] for m in items] == ["user", "assistant"]
        assert items[1]["content"] == stream.text
        assert items[1]["usage"] == stream.done["usage"]

        # Cancel and partial persistence on PostgreSQL too.
        answer: dict[str, Any] = client.post(
            "/api/chat",
            json={"message": "[[fake tokens=5 drop_after=2]] x", "session_id": session_id},
        ).json()
        assert answer["error"]["details"]["message"]["status"] == "error"
        detail = client.get(f"/api/sessions/{session_id}").json()
        assert detail["message_count"] == 4
        assert client.get("/readyz").json()["database"] == "ok"


def test_pagination_and_delete_on_postgres(
    make_server: Callable[..., AppServer], postgres_url: str
) -> None:
    server = make_server(database_url=postgres_url)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        ids = [client.post("/api/sessions", json={"title": f"p{i}"}).json()["id"] for i in range(5)]
        first = client.get("/api/sessions", params={"limit": 2}).json()
        second = client.get(
            "/api/sessions", params={"limit": 2, "cursor": first["next_cursor"]}
        ).json()
        assert [s["id"] for s in first["items"] + second["items"]] == ids[::-1][:4]
        for session_id in ids:
            assert client.delete(f"/api/sessions/{session_id}").status_code == 204


def test_strange_model_values_cannot_fail_the_final_write_on_postgres(
    make_server: Callable[..., AppServer], postgres_url: str
) -> None:
    """Tool names, call ids and finish reasons longer than their columns are clipped."""
    server = make_server(database_url=postgres_url)
    long_name, long_finish = "t" * 300, "f" * 100
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        with client.stream(
            "POST",
            "/api/chat/stream",
            json={"message": f"[[fake tool={long_name} finish={long_finish} tokens=3]] x"},
        ) as response:
            stream = read_stream(response)
        assert stream.done["status"] == "complete" and stream.done["persisted"] is True
        assert stream.done["finish_reason"] == "f" * 64
        (call,) = stream.of("tool_call")
        assert call.data["name"] == "t" * 255 and len(call.data["call_id"]) == 255
        session_id = stream.events[0].data["session_id"]
        items = client.get(f"/api/sessions/{session_id}/messages").json()["items"]
        assert [m["role"] for m in items] == ["user", "assistant", "tool", "assistant"]
        assert items[2]["name"] == "t" * 255
        assert items[2]["tool_call_id"] == call.data["call_id"]
        assert items[3]["finish_reason"] == "f" * 64
