"""Messages form a tree (issue #25 item 2): every write links to the active branch,
the model's context is that branch only, and `GET …/messages` shows it with each
message's siblings.

Real uvicorn, the fake upstream over real HTTP (it records what it was sent:
the model's context), httpx for HTTP and SSE, the `websockets` client for the
WebSocket, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.support.branching import (
    BOTH_DATABASES,
    branch,
    context_of,
    database_url,  # noqa: F401 (the fixture, on both databases)
    every_row,
    stream_chat,
)
from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.ws import dones, open_socket, recv_until, send

pytestmark = BOTH_DATABASES


def test_every_transport_writes_on_one_branch_each_row_after_the_one_before(
    server: AppServer, client: httpx.Client, fake: FakeUpstreamThread
) -> None:
    session = stream_chat(client, "[[fake tokens=2]] native")["session_id"]
    answer = client.post(
        "/api/chat", json={"message": "[[fake tokens=2]] json", "session_id": session}
    )
    assert answer.status_code == 200, answer.text
    with open_socket(server) as ws:
        send(
            ws,
            {
                "type": "chat",
                "request_id": "r1",
                "message": "[[fake tokens=2]] socket",
                "session_id": session,
            },
        )
        recv_until(ws, lambda frames: dones(frames) == 1)
    v1 = client.post(
        "/v1/chat/completions",
        json={
            "model": "test-model",
            "messages": [{"role": "user", "content": "[[fake tokens=2]] facade"}],
        },
        headers={"X-Chatstream-Session-Id": session},
    )
    assert v1.status_code == 200, v1.text
    answer_id = uuid.UUID(v1.headers["x-chatstream-message-id"])
    responses = client.post(
        "/v1/responses",
        json={
            "model": "test-model",
            "input": "[[fake tokens=2]] responses",
            "previous_response_id": f"resp_{answer_id.hex}",
        },
    )
    assert responses.status_code == 200, responses.text

    rows = every_row(server, session)
    assert [row.role for row in rows] == ["user", "assistant"] * 5
    # One chain: each row follows the one written before it, the first follows nothing.
    assert [row.parent_id for row in rows] == [None, *(row.id for row in rows[:-1])]
    shown = branch(client, session)
    assert [m["id"] for m in shown] == [str(row.id) for row in rows]
    assert all(m["sibling_count"] == 1 and m["sibling_index"] == 0 for m in shown)
    assert all(m["sibling_ids"] == [m["id"]] for m in shown)
    assert [m["parent_id"] for m in shown] == [None, *(m["id"] for m in shown[:-1])]
    # The model was given the whole branch, the new message last.
    assert context_of(fake)[-3:] == [rows[-4].content, rows[-3].content, rows[-2].content]


def test_a_tool_round_is_a_chain_under_its_question(
    server: AppServer, client: httpx.Client
) -> None:
    start = stream_chat(
        client, '[[fake tool=get_current_time tool_args={"timezone": "Europe/Paris"}]] t'
    )
    rows = every_row(server, start["session_id"])
    assert [row.role for row in rows] == ["user", "assistant", "tool", "assistant"]
    assert [row.parent_id for row in rows] == [None, *(row.id for row in rows[:-1])]
    assert str(rows[-1].id) == start["message_id"]


def test_continuing_an_earlier_response_branches_and_its_context_is_that_branch_only(
    server: AppServer, client: httpx.Client, fake: FakeUpstreamThread
) -> None:
    def respond(text: str, previous: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": "test-model", "input": f"[[fake tokens=2]] {text}"}
        if previous is not None:
            body["previous_response_id"] = previous
        response = client.post("/v1/responses", json=body)
        assert response.status_code == 200, response.text
        answer = dict(response.json())
        # (What the OpenAI SDK calls `output_text`.)
        answer["said"] = "".join(
            part["text"] for item in answer["output"] for part in item.get("content", ())
        )
        return answer

    first = respond("q1")
    respond("q2", first["id"])
    third = respond("q3", first["id"])  # from the first answer again: a second branch
    # The model saw the first turn and the new question, not the branch it left.
    assert context_of(fake) == [
        "[[fake tokens=2]] q1",
        first["said"],
        "[[fake tokens=2]] q3",
    ]

    session = str(client.get(f"/api/runs/{uuid.UUID(hex=third['id'][5:])}").json()["session_id"])
    shown = branch(client, session)
    assert [m["content"] for m in shown][::2] == ["[[fake tokens=2]] q1", "[[fake tokens=2]] q3"]
    q2, q3 = [row for row in every_row(server, session) if row.content.endswith(("q2", "q3"))]
    assert shown[2]["sibling_ids"] == [str(q2.id), str(q3.id)]
    assert (shown[2]["sibling_index"], shown[2]["sibling_count"]) == (1, 2)
    assert shown[2]["parent_id"] == shown[1]["id"] == str(q2.parent_id)
    # A plain message follows the active leaf: the third answer.
    stream_chat(client, "[[fake tokens=2]] q4", session_id=session)
    assert context_of(fake)[2:] == [
        "[[fake tokens=2]] q3",
        third["said"],
        "[[fake tokens=2]] q4",
    ]


def test_the_branch_pages_backwards_along_its_parents(
    server: AppServer, client: httpx.Client
) -> None:
    session = stream_chat(client, "[[fake tokens=1]] m0")["session_id"]
    for turn in range(1, 4):
        stream_chat(client, f"[[fake tokens=1]] m{turn}", session_id=session)
    everything = branch(client, session)
    assert len(everything) == 8
    newest = client.get(f"/api/sessions/{session}/messages", params={"limit": 3}).json()
    assert newest["items"] == everything[-3:]
    assert newest["next_cursor"] == everything[-3]["id"]
    middle = client.get(
        f"/api/sessions/{session}/messages",
        params={"limit": 4, "before": newest["next_cursor"]},
    ).json()
    assert middle["items"] == everything[1:5]
    oldest = client.get(
        f"/api/sessions/{session}/messages",
        params={"limit": 4, "before": middle["next_cursor"]},
    ).json()
    assert oldest == {"items": everything[:1], "next_cursor": None}
    unknown = client.get(f"/api/sessions/{session}/messages", params={"before": str(uuid.uuid4())})
    assert unknown.status_code == 404


def test_deleting_a_turn_relinks_what_followed_it(
    server: AppServer, client: httpx.Client, fake: FakeUpstreamThread
) -> None:
    session = stream_chat(client, "[[fake tokens=1]] t1")["session_id"]
    middle = stream_chat(client, "[[fake tokens=1]] t2", session_id=session)
    stream_chat(client, "[[fake tokens=1]] t3", session_id=session)
    deleted = client.delete(f"/v1/responses/resp_{uuid.UUID(middle['message_id']).hex}")
    assert deleted.status_code == 200, deleted.text
    shown = branch(client, session)
    assert [m["content"] for m in shown][::2] == ["[[fake tokens=1]] t1", "[[fake tokens=1]] t3"]
    assert shown[2]["parent_id"] == shown[1]["id"]
    stream_chat(client, "[[fake tokens=1]] t4", session_id=session)
    assert [c for c in context_of(fake) if c.startswith("[[")] == [
        "[[fake tokens=1]] t1",
        "[[fake tokens=1]] t3",
        "[[fake tokens=1]] t4",
    ]
