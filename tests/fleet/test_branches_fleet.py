"""Branches across two real instances on one PostgreSQL and one Redis (issue #25 item 2).

An edit or a regeneration sent to B while a run lives on A is refused as a
message would be (the session's turn is Redis'); a branch switched on one
instance is the one the other lists and continues.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fleet.conftest import FleetFactory
from tests.support.process import ServeProcess
from tests.support.servers import FakeUpstreamThread
from tests.support.sse import iter_sse, read_stream

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

STALLED = "[[fake tokens=6 stall_after=2]] hold on"


def chat(server: ServeProcess, message: str, **body: Any) -> dict[str, Any]:
    """A chat streamed to its end on `server`; its `start` event."""
    with (
        httpx.Client(base_url=server.base_url, timeout=30) as client,
        client.stream("POST", "/api/chat/stream", json={"message": message, **body}) as response,
    ):
        assert response.status_code == 200, response.read()
        stream = read_stream(response)
    assert stream.done["status"] == "complete"
    return stream.events[0].data


def listed(server: ServeProcess, session: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.base_url}/api/sessions/{session}/messages", timeout=10)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def post(server: ServeProcess, path: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, timeout=30)


def test_edits_meet_the_fleets_session_gate_and_branches_are_shared(
    fleet: FleetFactory, fake: FakeUpstreamThread
) -> None:
    a, b = fleet("a"), fleet("b")
    session = chat(a, "[[fake tokens=2]] q1")["session_id"]
    chat(a, "[[fake tokens=2]] q2", session_id=session)
    first = listed(b, session)
    q2 = first[2]
    edit_path = f"/api/sessions/{session}/messages/{q2['id']}/edit"
    again_path = f"/api/sessions/{session}/messages/{first[3]['id']}/regenerate"

    with (
        httpx.Client(base_url=a.base_url, timeout=30) as client,
        client.stream(
            "POST", "/api/chat/stream", json={"message": STALLED, "session_id": session}
        ) as live,
    ):
        events = iter_sse(live)
        live_id = read_stream(events, stop_after=3).events[0].data["message_id"]
        for refused in (
            post(b, edit_path, content="[[fake tokens=2]] not now"),
            post(b, again_path),
        ):
            assert refused.status_code == 409, refused.text
            error = refused.json()["error"]
            assert error["code"] == "run_in_progress"
            assert error["details"] == {"message_id": live_id}
        fake.fake.release(wait_for=1)
        read_stream(events)
    assert len(listed(a, session)) == 6  # refused, they wrote nothing

    edited = post(b, edit_path, content="[[fake tokens=2]] q2 edited")
    assert edited.status_code == 200, edited.text
    assert [m["content"] for m in fake.fake.requests[-1]["messages"]] == [
        first[0]["content"],
        first[1]["content"],
        "[[fake tokens=2]] q2 edited",
    ]
    on_a = listed(a, session)
    assert [m["content"] for m in on_a][2] == "[[fake tokens=2]] q2 edited"
    assert on_a[2]["sibling_ids"] == [q2["id"], on_a[2]["id"]]

    # Switched on A, listed and continued on B.
    switched = httpx.put(
        f"{a.base_url}/api/sessions/{session}/active-branch",
        json={"message_id": q2["id"]},
        timeout=10,
    )
    assert switched.status_code == 200, switched.text
    on_b = listed(b, session)
    assert on_b == switched.json()["items"]
    assert [m["content"] for m in on_b][::2] == [
        "[[fake tokens=2]] q1",
        "[[fake tokens=2]] q2",
        STALLED,
    ]
    chat(b, "[[fake tokens=2]] q4", session_id=session)
    assert [m["content"] for m in fake.fake.requests[-1]["messages"]] == [
        *(m["content"] for m in on_b),
        "[[fake tokens=2]] q4",
    ]
