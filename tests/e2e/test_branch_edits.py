"""Edit, regenerate, switch (issue #25 item 2): every earlier branch is kept, the
active one is what `GET …/messages` lists and what the model is given.

Real uvicorn, the fake upstream over real HTTP (it records each context it
was sent), httpx for HTTP and SSE, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.support.branching import (
    BOTH_DATABASES,
    branch,
    context_of,
    database_url,  # noqa: F401 (the fixture, on both databases)
    every_row,
    stream_chat,
    streamed,
)
from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.session_watch import Watcher
from tests.support.sse import iter_sse, read_stream

pytestmark = BOTH_DATABASES

STALLED = "[[fake tokens=6 stall_after=2]] hold on"


def conversation(client: httpx.Client, *questions: str) -> tuple[str, list[dict[str, Any]]]:
    """A session with one answered turn per question; it and its branch."""
    session = stream_chat(client, questions[0])["session_id"]
    for question in questions[1:]:
        stream_chat(client, question, session_id=session)
    return session, branch(client, session)


def edit(client: httpx.Client, session: str, message_id: str, **body: Any) -> httpx.Response:
    return client.post(f"/api/sessions/{session}/messages/{message_id}/edit", json=body)


def regenerate(client: httpx.Client, session: str, message_id: str, **body: Any) -> httpx.Response:
    return client.post(f"/api/sessions/{session}/messages/{message_id}/regenerate", json=body)


def switch(client: httpx.Client, session: str, message_id: str) -> list[dict[str, Any]]:
    response = client.put(f"/api/sessions/{session}/active-branch", json={"message_id": message_id})
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def contents(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "user"]


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def test_an_edit_is_a_new_branch_and_the_old_one_is_kept_and_can_be_shown_again(
    server: AppServer, client: httpx.Client, fake: FakeUpstreamThread
) -> None:
    session, before = conversation(
        client, "[[fake tokens=2]] q1", "[[fake tokens=2]] q2", "[[fake tokens=2]] q3"
    )
    q1, a1, q2 = before[0], before[1], before[2]

    edited = edit(client, session, q2["id"], content="[[fake tokens=3]] q2 again")
    assert edited.status_code == 200, edited.text
    answer = edited.json()["message"]
    assert answer["role"] == "assistant" and answer["status"] == "complete"
    # The model was given the branch up to the new text, nothing of the one it replaces.
    assert context_of(fake) == [q1["content"], a1["content"], "[[fake tokens=3]] q2 again"]

    shown = branch(client, session)
    assert contents(shown) == ["[[fake tokens=2]] q1", "[[fake tokens=3]] q2 again"]
    new_q2 = shown[2]
    assert (new_q2["parent_id"], answer["parent_id"]) == (a1["id"], new_q2["id"])
    assert shown[3]["id"] == answer["id"]
    assert new_q2["sibling_ids"] == [q2["id"], new_q2["id"]]
    assert (new_q2["sibling_index"], new_q2["sibling_count"]) == (1, 2)
    # Nothing was lost: the first branch's six messages and the new two.
    assert len(every_row(server, session)) == 8

    # Switching back shows the first branch whole, down to its last answer...
    assert switch(client, session, q2["id"]) == before[:2] + [
        {**m, **({"sibling_ids": new_q2["sibling_ids"], "sibling_count": 2} if i == 2 else {})}
        for i, m in enumerate(before[2:], start=2)
    ]
    assert branch(client, session)[-1]["id"] == before[-1]["id"]
    # ... and it is what the next message follows and the model is given.
    stream_chat(client, "[[fake tokens=2]] q4", session_id=session)
    assert context_of(fake) == [m["content"] for m in before] + ["[[fake tokens=2]] q4"]
    # Switching to the edit again shows its branch.
    assert contents(switch(client, session, new_q2["id"])) == contents(shown)


def test_editing_the_first_message_starts_a_second_root(
    client: httpx.Client, fake: FakeUpstreamThread
) -> None:
    session, before = conversation(client, "[[fake tokens=2]] first")
    response = edit(client, session, before[0]["id"], content="[[fake tokens=2]] instead")
    assert response.status_code == 200, response.text
    assert context_of(fake) == ["[[fake tokens=2]] instead"]
    shown = branch(client, session)
    assert contents(shown) == ["[[fake tokens=2]] instead"]
    assert shown[0]["parent_id"] is None
    assert shown[0]["sibling_ids"] == [before[0]["id"], shown[0]["id"]]


def test_regenerate_adds_a_sibling_answer_from_the_answer_or_its_question(
    server: AppServer, client: httpx.Client, fake: FakeUpstreamThread
) -> None:
    session, before = conversation(
        client, "[[fake tokens=2]] q1", "[[fake tokens=2]] q2", "[[fake tokens=2]] q3"
    )
    a2 = before[3]
    with client.stream(
        "POST",
        f"/api/sessions/{session}/messages/{a2['id']}/regenerate",
        json={"stream": True, "temperature": 0.5},
    ) as response:
        stream = streamed(response)
    start = stream.events[0].data
    assert stream.done["status"] == "complete"
    assert (start["session_id"], start["user_message_id"]) == (session, before[2]["id"])
    # Answered with the branch up to its question, the options of the request.
    assert context_of(fake) == [m["content"] for m in before[:3]]
    assert fake.fake.requests[-1]["temperature"] == 0.5

    shown = branch(client, session)
    assert [m["id"] for m in shown] == [m["id"] for m in before[:3]] + [start["message_id"]]
    assert shown[3]["content"] == stream.text
    assert shown[3]["sibling_ids"] == [a2["id"], start["message_id"]]
    # From the question: a third answer. No body at all is a plain JSON answer.
    third = client.post(f"/api/sessions/{session}/messages/{before[2]['id']}/regenerate")
    assert third.status_code == 200, third.text
    third_id = third.json()["message"]["id"]
    assert branch(client, session)[3]["sibling_ids"] == [a2["id"], start["message_id"], third_id]
    # The conversation that went on after the first answer is still there.
    assert switch(client, session, a2["id"]) == [
        {**m, "sibling_ids": [a2["id"], start["message_id"], third_id], "sibling_count": 3}
        if m["id"] == a2["id"]
        else m
        for m in before
    ]
    assert len(every_row(server, session)) == 8


def test_errors_are_typed_and_leave_no_trace(
    server: AppServer, client: httpx.Client, fake: FakeUpstreamThread
) -> None:
    session, before = conversation(client, "[[fake tokens=2]] q1")
    other, elsewhere = conversation(client, "[[fake tokens=2]] other")
    unknown = str(uuid.uuid4())

    for response in (
        edit(client, session, unknown, content="x"),
        edit(client, session, elsewhere[0]["id"], content="x"),  # another session's
        edit(client, str(uuid.uuid4()), before[0]["id"], content="x"),
        regenerate(client, session, unknown),
        client.put(f"/api/sessions/{session}/active-branch", json={"message_id": unknown}),
    ):
        assert response.status_code == 404, response.text
        assert error_of(response)["code"] == "not_found"

    refused = edit(client, session, before[1]["id"], content="x")
    assert refused.status_code == 422
    assert error_of(refused)["code"] == "not_a_user_message"
    assert "only a user message can be edited" in error_of(refused)["message"]
    invalid = edit(client, session, before[0]["id"], content="   ")
    assert (invalid.status_code, error_of(invalid)["code"]) == (422, "invalid_request")
    assert error_of(invalid)["details"][0]["loc"] == ["body", "content"]
    extra = regenerate(client, session, before[1]["id"], message="not a field")
    assert (extra.status_code, error_of(extra)["code"]) == (422, "invalid_request")

    # An answer with no question above it (a context given as it was).
    given = client.post(
        "/v1/chat/completions",
        json={
            "model": "test-model",
            "messages": [
                {"role": "assistant", "content": "Hello, how can I help?"},
                {"role": "user", "content": "[[fake tokens=1]] hi"},
            ],
        },
    )
    assert given.status_code == 200, given.text
    greeting = branch(client, given.headers["x-chatstream-session-id"])[0]
    nothing = regenerate(client, given.headers["x-chatstream-session-id"], greeting["id"])
    assert (nothing.status_code, error_of(nothing)["code"]) == (422, "nothing_to_regenerate")

    # A run live in the session: both are refused as a message would be, naming it.
    with client.stream(
        "POST", "/api/chat/stream", json={"message": STALLED, "session_id": session}
    ) as live:
        events = iter_sse(live)
        head = read_stream(events, stop_after=3)
        live_id = head.events[0].data["message_id"]
        for response in (
            edit(client, session, before[0]["id"], content="[[fake tokens=1]] x"),
            regenerate(client, session, before[1]["id"]),
        ):
            assert response.status_code == 409, response.text
            assert error_of(response)["code"] == "run_in_progress"
            assert error_of(response)["details"] == {"message_id": live_id}
        fake.fake.release(wait_for=1)
        read_stream(events)
    # Refused, they wrote nothing: the two turns are all there is.
    assert len(every_row(server, session)) == 4
    assert len(every_row(server, other)) == 2


def test_edits_and_regenerations_go_through_the_chat_admission(
    make_server: Any, fake: FakeUpstreamThread
) -> None:
    server = make_server(rate_limit="3/minute")
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        session, before = conversation(client, "[[fake tokens=1]] q1")
        assert regenerate(client, session, before[1]["id"]).status_code == 200
        assert (
            edit(client, session, before[0]["id"], content="[[fake tokens=1]] e").status_code == 200
        )
        for response in (
            regenerate(client, session, before[1]["id"]),
            edit(client, session, before[0]["id"], content="[[fake tokens=1]] e2"),
        ):
            assert response.status_code == 429, response.text
            assert error_of(response)["code"] == "rate_limited"
            assert "retry-after" in response.headers


def test_an_edits_client_message_id_is_its_idempotency_key(client: httpx.Client) -> None:
    session, before = conversation(client, "[[fake tokens=1]] q1")
    body = {"content": "[[fake tokens=1]] once", "client_message_id": "edit-1"}
    first = edit(client, session, before[0]["id"], **body)
    again = edit(client, session, before[0]["id"], **body)
    assert first.status_code == again.status_code == 200
    assert first.json()["message"]["id"] == again.json()["message"]["id"]
    assert len(branch(client, session)[0]["sibling_ids"]) == 2


def test_while_an_answer_is_generated_the_branch_ends_at_its_question(
    client: httpx.Client, fake: FakeUpstreamThread
) -> None:
    with ThreadPoolExecutor(1) as releaser:
        released = releaser.submit(fake.fake.release, 1)  # the first answer's stall
        session, before = conversation(client, STALLED)
        released.result()
    with client.stream(
        "POST",
        f"/api/sessions/{session}/messages/{before[0]['id']}/regenerate",
        json={"stream": True},
    ) as live:
        events = iter_sse(live)
        read_stream(events, stop_after=3)
        # Not the answer it replaces, not yet the new one: the question, alone.
        assert [m["id"] for m in branch(client, session)] == [before[0]["id"]]
        fake.fake.release(wait_for=1)
        new_id = read_stream(events).done["message_id"]
    assert [m["id"] for m in branch(client, session)] == [before[0]["id"], new_id]


def test_a_second_tab_is_told_when_the_branch_is_switched(
    make_server: Callable[..., AppServer],
) -> None:
    # Idle streams say so often: the watcher notices at once that its tab was closed.
    server = make_server(keepalive_interval_s=0.2)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        session, before = conversation(client, "[[fake tokens=2]] q1", "[[fake tokens=2]] q2")
        q2 = before[2]
        edited = edit(client, session, q2["id"], content="[[fake tokens=2]] q2 again")
        assert edited.status_code == 200
        with Watcher(server.base_url, session) as tab:
            switch(client, session, q2["id"])
            updated = tab.seen(
                lambda events: any(e.type == "session.updated" for e in events), "the switch"
            )
        told = next(e for e in updated if e.type == "session.updated").data
        assert told["session_id"] == session
        # What the tab then reads is the branch switched to.
        assert contents(branch(client, session)) == contents(before)
