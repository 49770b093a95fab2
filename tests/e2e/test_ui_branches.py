"""The AI SDK's `regenerate()` and `sendMessage({messageId})` as branches (issue #25 item 2).

The `ai` package's own chat (`AbstractChat`, what `useChat` wraps, over
`DefaultChatTransport`) runs in Node against real uvicorn and the fake
upstream: the SDK rewrites its list and sends it, and chatstream keeps every
branch the SDK dropped, gives the model the branch the SDK shows, and lists
that branch as the SDK has it. On SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.branching import (
    BOTH_DATABASES,
    branch,
    database_url,  # noqa: F401 (the fixture, on both databases)
    every_row,
)
from tests.support.node import NodeScript, node_executable
from tests.support.servers import AppServer, FakeUpstreamThread

pytestmark = BOTH_DATABASES


@pytest.fixture
def node() -> str:
    return node_executable()


def q(text: str) -> str:
    return f"[[fake tokens=2]] {text}"


def test_regenerate_and_edits_keep_every_branch_and_the_model_sees_the_sdks(
    node: str, server: AppServer, client: httpx.Client, fake: FakeUpstreamThread
) -> None:
    steps: list[dict[str, Any]] = [
        {"send": q("q1")},
        {"send": q("q2")},
        {"regenerate": True},  # the last answer
        {"edit": q("q2 edited"), "at": 2},  # a user message the SDK made: after our a1
        {"regenerate": True, "at": 1},  # our a1's id
        {"edit": q("q1 edited"), "at": 0},  # the first message: a second root
        {"regenerate": True, "at": 0},  # the SDK's own user id, found by its place
    ]
    script = NodeScript(
        node,
        "ui_branches.mjs",
        {"api": f"{server.base_url}/api/ui/chat", "chatId": "b1", "steps": steps},
    )
    try:
        lists = [script.expect("step")["messages"] for _ in steps]
        result = script.result()
    finally:
        script.close()
    assert all(len(m) == 2 * n for m, n in zip(lists, (1, 2, 2, 2, 1, 1, 1), strict=True))
    a1, a2 = lists[1][1], lists[1][3]

    # What the model was given for each, in order: always the branch the SDK showed.
    contexts = [[m["content"] for m in r["messages"]] for r in fake.fake.requests[-len(steps) :]]
    assert contexts == [
        [q("q1")],
        [q("q1"), a1["text"], q("q2")],
        [q("q1"), a1["text"], q("q2")],
        [q("q1"), a1["text"], q("q2 edited")],
        [q("q1")],
        [q("q1 edited")],
        [q("q1 edited")],
    ]

    session = str(client.get(f"/api/runs/{a1['id']}").json()["session_id"])
    shown = branch(client, session)
    final = result["messages"]
    # The server lists what the SDK holds: its answers by their ids, the same texts.
    assert [m["content"] for m in shown] == [m["text"] for m in final]
    assert shown[1]["id"] == final[1]["id"]
    first, edited_first = lists[0][0], final[0]
    assert len(shown[0]["sibling_ids"]) == 2 and shown[0]["sibling_index"] == 1
    assert len(shown[1]["sibling_ids"]) == 2  # answered twice (steps 6 and 7)
    assert first["id"] == edited_first["id"]  # the SDK keeps its id; we keep both versions

    # Nothing the SDK dropped is gone: q1, its two answers; q2 and its two; q2 edited and
    # its answer; q1 edited and its two answers.
    rows = every_row(server, session)
    assert len(rows) == 11
    by_id = {str(row.id): row for row in rows}
    regenerated_a2 = lists[2][3]
    assert by_id[regenerated_a2["id"]].parent_id == by_id[a2["id"]].parent_id
    edited_q2 = next(row for row in rows if row.content == q("q2 edited"))
    assert str(edited_q2.parent_id) == a1["id"]
    again_a1 = lists[4][1]
    assert by_id[again_a1["id"]].parent_id == by_id[a1["id"]].parent_id
    roots = [row for row in rows if row.parent_id is None]
    assert [row.content for row in roots] == [q("q1"), q("q1 edited")]

    # The branch the SDK left behind is there to switch back to.
    back = client.put(f"/api/sessions/{session}/active-branch", json={"message_id": a2["id"]})
    assert [m["id"] for m in back.json()["items"]][1::2] == [a1["id"], a2["id"]]


def test_an_edit_of_an_answer_is_refused(
    node: str, server: AppServer, client: httpx.Client
) -> None:
    script = NodeScript(
        node,
        "ui_branches.mjs",
        {"api": f"{server.base_url}/api/ui/chat", "chatId": "b2", "steps": [{"send": q("q")}]},
    )
    try:
        answer = script.expect("step")["messages"][1]
        script.result()
    finally:
        script.close()
    # (The SDK itself refuses to replace an answer; a client that sends one anyway is told.)
    question = {"id": answer["id"], "role": "user", "parts": [{"type": "text", "text": "x"}]}
    refused = client.post(
        "/api/ui/chat",
        json={"id": "b2", "messages": [question], "messageId": answer["id"]},
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "not_a_user_message"
