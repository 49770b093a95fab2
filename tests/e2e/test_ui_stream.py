"""`/api/ui/chat` driven by the real `ai` npm package (DefaultChatTransport, readUIMessageStream).

Every test runs the SDK's own client code in Node against real uvicorn and
the fake upstream, and checks what the SDK assembled against what
chatstream persisted. The chunks are also checked against the SDK's own
documentation of them (its type declarations): older strict clients reject
keys they do not know.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from functools import cache
from typing import Any, get_args, get_type_hints

import httpx
import pytest
import schemathesis

from chatstream.api.ui_schemas import UIMessageChunk
from tests.support.node import CLIENTS_DIR, NodeScript, node_executable, run_script
from tests.support.readme import SHOWN_URL, readme_block
from tests.support.sentinels import SENTINEL_JWT_SECRET, TOKEN_ALICE, TOKEN_BOB
from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.wait import wait_until

API = "/api/ui/chat"


@pytest.fixture
def node() -> str:
    return node_executable()


@cache
def documented_chunk_keys() -> dict[str, set[str]]:
    """Every UI message chunk type and its keys, as the SDK's type declarations state them."""
    source = (CLIENTS_DIR / "node_modules" / "ai" / "dist" / "index.d.ts").read_text()
    union = source.split("type UIMessageChunk<", 1)[1].split("\n};\n", 1)[0]
    documented: dict[str, set[str]] = {}
    for member in re.split(r"\n\} \| ", union):
        kind = re.search(r"type: '([^']+)';", member)
        if kind is not None:
            documented[kind.group(1)] = set(re.findall(r"^\s+(\w+)\??:", member, re.MULTILINE))
    data = source.split("type DataUIMessageChunk<", 1)[1].split("}>;", 1)[0]
    documented["data-*"] = set(re.findall(r"^\s+(\w+)\??:", data, re.MULTILINE))
    # The parse itself must hold: a drifted declaration file fails here, not silently.
    assert documented["text-delta"] == {"type", "id", "delta", "providerMetadata"}
    assert documented["data-*"] == {"type", "id", "data", "transient"}
    assert len(documented) >= 25
    return documented


def assert_only_documented_keys(chunks: list[dict[str, Any]]) -> None:
    documented = documented_chunk_keys()
    for chunk in chunks:
        kind = "data-*" if chunk["type"].startswith("data-") else chunk["type"]
        assert kind in documented, chunk
        assert set(chunk) <= documented[kind], (chunk, documented[kind])


def user_message(text: str, message_id: str = "u1") -> dict[str, Any]:
    return {"id": message_id, "role": "user", "parts": [{"type": "text", "text": text}]}


def send(node: str, server: AppServer, chat_id: str, text: str, **options: Any) -> dict[str, Any]:
    result = run_script(
        node,
        "ui_chat.mjs",
        {
            "api": server.base_url + API,
            "action": "send",
            "chatId": chat_id,
            "messages": [user_message(text)],
            **options,
        },
    )
    assert_only_documented_keys(result["chunks"])
    return result


def text_of(message: dict[str, Any]) -> str:
    return "".join(part["text"] for part in message["parts"] if part["type"] == "text")


def types_of(result: dict[str, Any]) -> list[str]:
    return [chunk["type"] for chunk in result["chunks"]]


def run_of(server: AppServer, message_id: str, token: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{server.base_url}/api/runs/{message_id}", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def stored(server: AppServer, session_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.base_url}/api/sessions/{session_id}/messages", timeout=10)
    return list(response.json()["items"])


def test_chunk_types_we_declare_are_the_sdks(node: str) -> None:
    # What OpenAPI documents and the translator builds is a subset of the SDK's own list.
    documented = documented_chunk_keys()
    for chunk_type in get_args(UIMessageChunk):
        fields = get_type_hints(chunk_type)
        kind = get_args(fields["type"])[0]
        key = "data-*" if kind.startswith("data-") else kind
        assert set(fields) <= documented[key], kind


def test_use_chat_assembles_exactly_the_persisted_answer(node: str, server: AppServer) -> None:
    result = send(node, server, "chat-Abc_123", "[[fake tokens=12]] hello")

    message = result["message"]
    assert result["errors"] == []
    assert types_of(result) == [
        "start",
        "start-step",
        "text-start",
        *["text-delta"] * 12,
        "text-end",
        "finish-step",
        "finish",
    ]
    assert result["chunks"][-1] == {"type": "finish", "finishReason": "stop"}
    run = run_of(server, message["id"])  # `start.messageId` is the run's message_id
    assert run["status"] == "complete"
    rows = stored(server, run["session_id"])
    assert [(r["role"], r["status"]) for r in rows] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert rows[0]["content"] == "[[fake tokens=12]] hello"
    assert rows[1]["id"] == message["id"]
    assert text_of(message) == rows[1]["content"] and len(rows[1]["content"]) > 12


def test_the_same_chat_id_continues_its_session_with_stored_history(
    node: str, server: AppServer, fake: FakeUpstreamThread
) -> None:
    first = send(node, server, "my-chat", "[[fake tokens=3]] first question")
    # The SDK sends the whole conversation; only the last user message is new.
    messages = [
        user_message("[[fake tokens=3]] first question"),
        first["message"],
        user_message("[[fake tokens=4]] second question", "u2"),
    ]
    second = run_script(
        node,
        "ui_chat.mjs",
        {"api": server.base_url + API, "chatId": "my-chat", "messages": messages},
    )
    assert_only_documented_keys(second["chunks"])

    session = run_of(server, first["message"]["id"])["session_id"]
    assert run_of(server, second["message"]["id"])["session_id"] == session
    upstream = fake.fake.requests[-1]["messages"]
    assert [m["content"] for m in upstream] == [
        "[[fake tokens=3]] first question",
        text_of(first["message"]),
        "[[fake tokens=4]] second question",
    ]
    assert len(stored(server, session)) == 4
    # Another chat id is another session.
    other = send(node, server, "another-chat", "[[fake tokens=2]] hi")
    assert run_of(server, other["message"]["id"])["session_id"] != session


def test_a_tool_round_arrives_as_tool_parts_with_input_and_output(
    node: str, server: AppServer
) -> None:
    result = send(
        node,
        server,
        "tools",
        '[[fake tool=get_current_time tool_args={"timezone": "Europe/Paris"}]] time?',
    )

    assert types_of(result)[:6] == [
        "start",
        "start-step",
        "tool-input-available",
        "tool-output-available",
        "finish-step",
        "start-step",
    ]
    parts = result["message"]["parts"]
    tool = next(p for p in parts if p["type"] == "tool-get_current_time")
    assert tool["state"] == "output-available"
    assert tool["input"] == {"timezone": "Europe/Paris"}
    assert tool["output"]["timezone"] == "Europe/Paris" and "time" in tool["output"]
    assert [p["type"] for p in parts].count("step-start") == 2

    rows = stored(server, run_of(server, result["message"]["id"])["session_id"])
    assert [r["role"] for r in rows] == ["user", "assistant", "tool", "assistant"]
    assert rows[1]["tool_calls"][0]["id"] == tool["toolCallId"]
    assert text_of(result["message"]) == rows[3]["content"] != ""


def test_an_upstream_failure_is_an_error_part(node: str, server: AppServer) -> None:
    result = send(node, server, "broken", "[[fake status=500]] hi")

    (error,) = result["errors"]  # the `error` chunk's errorText, as the SDK reports it
    assert error.startswith("The model server failed (HTTP 500)")
    kinds = types_of(result)
    assert kinds[:2] == ["start", "start-step"]
    assert kinds[-3:] == ["error", "finish-step", "finish"]
    assert result["chunks"][-1]["finishReason"] == "error"
    assert run_of(server, result["message"]["id"])["status"] == "error"


def test_a_cancel_mid_stream_ends_with_abort(
    node: str, server: AppServer, fake: FakeUpstreamThread
) -> None:
    client = NodeScript(
        node,
        "ui_chat.mjs",
        {
            "api": server.base_url + API,
            "chatId": "to-cancel",
            "messages": [user_message("[[fake tokens=20 stall_after=3]] long")],
            "notifyAfterDeltas": 3,
        },
    )
    try:
        message_id = client.expect("deltas")["messageId"]
        cancel = httpx.post(f"{server.base_url}/api/runs/{message_id}/cancel", timeout=10)
        assert cancel.status_code == 202
        result = client.result()
    finally:
        client.close()

    assert_only_documented_keys(result["chunks"])
    assert types_of(result)[-2:] == ["text-end", "abort"]
    assert "finish" not in types_of(result)
    run = run_of(server, message_id)
    assert run["status"] == "cancelled"
    saved = stored(server, run["session_id"])[-1]
    assert saved["status"] == "cancelled"
    assert saved["content"] == text_of(result["message"]) != ""


def test_regenerate_answers_the_same_question_again_keeping_the_first_answer(
    node: str, server: AppServer, fake: FakeUpstreamThread
) -> None:
    question = user_message("[[fake tokens=5]] what is chatstream?")
    first = send(node, server, "regen", "[[fake tokens=5]] what is chatstream?")
    # useChat's regenerate(): the last assistant message dropped, its id named.
    again = run_script(
        node,
        "ui_chat.mjs",
        {
            "api": server.base_url + API,
            "chatId": "regen",
            "trigger": "regenerate-message",
            "messageId": first["message"]["id"],
            "messages": [question],
        },
    )
    assert_only_documented_keys(again["chunks"])

    assert again["message"]["id"] != first["message"]["id"]
    session = run_of(server, first["message"]["id"])["session_id"]
    assert run_of(server, again["message"]["id"])["session_id"] == session
    # The question went upstream again, without the first answer in its context.
    assert fake.fake.requests[-1]["messages"] == [
        {"role": "user", "content": "[[fake tokens=5]] what is chatstream?"}
    ]
    # The new answer is the one shown; the first is kept as its sibling.
    rows = stored(server, session)
    assert [(r["role"], r["id"]) for r in rows] == [
        ("user", rows[0]["id"]),
        ("assistant", again["message"]["id"]),
    ]
    assert rows[1]["sibling_ids"] == [first["message"]["id"], again["message"]["id"]]
    assert rows[1]["content"] == text_of(again["message"]) != ""


def test_resume_after_a_dropped_connection_streams_the_live_run_from_its_start(
    node: str, server: AppServer, fake: FakeUpstreamThread
) -> None:
    api = server.base_url + API
    dropped = send(
        node,
        server,
        "resumable",
        "[[fake tokens=10 stall_after=4]] tell me",
        body={"resume": True},
        dropAfterDeltas=2,
    )
    assert dropped["dropped"] is True
    message_id = dropped["chunks"][0]["messageId"]
    assert run_of(server, message_id)["status"] == "running"  # the drop did not stop it

    client = NodeScript(
        node,
        "ui_chat.mjs",
        {"api": api, "action": "reconnect", "chatId": "resumable", "notifyAfterDeltas": 4},
    )
    try:
        client.expect("deltas")  # the four deltas before the stall, replayed
        fake.fake.release()
        resumed = client.result()
    finally:
        client.close()

    assert_only_documented_keys(resumed["chunks"])
    assert resumed["chunks"][0] == {"type": "start", "messageId": message_id}
    assert types_of(resumed)[-1] == "finish"
    saved = stored(server, run_of(server, message_id)["session_id"])[-1]
    assert (saved["id"], saved["status"]) == (message_id, "complete")
    assert text_of(resumed["message"]) == saved["content"]
    assert saved["content"].startswith(text_of(dropped["message"]))

    # Nothing live any more: 204, which the SDK reports as no stream.
    ended = run_script(
        node, "ui_chat.mjs", {"api": api, "action": "reconnect", "chatId": "resumable"}
    )
    assert ended == {"event": "result", "noStream": True}
    never = run_script(
        node, "ui_chat.mjs", {"api": api, "action": "reconnect", "chatId": "unknown"}
    )
    assert never["noStream"] is True


def test_a_dropped_connection_cancels_the_run_without_resume(node: str, server: AppServer) -> None:
    dropped = send(
        node, server, "dropper", "[[fake tokens=10 stall_after=4]] tell me", dropAfterDeltas=2
    )
    message_id = dropped["chunks"][0]["messageId"]

    run = wait_until(
        lambda: (state := run_of(server, message_id))["status"] != "running" and state,
        what="the run to end after its client left",
    )
    assert run["status"] == "cancelled"
    saved = stored(server, run["session_id"])[-1]
    assert (saved["id"], saved["status"]) == (message_id, "cancelled")


def test_chat_ids_are_scoped_per_owner(
    node: str, make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    server = make_server(auth="jwt", jwt_secret=SENTINEL_JWT_SECRET)
    api = server.base_url + API
    alice = {"Authorization": f"Bearer {TOKEN_ALICE}"}
    bob = {"Authorization": f"Bearer {TOKEN_BOB}"}

    first = send(node, server, "shared-id", "[[fake tokens=3]] alice", headers=alice)
    second = send(node, server, "shared-id", "[[fake tokens=3]] bob", headers=bob)
    alice_session = run_of(server, first["message"]["id"], TOKEN_ALICE)["session_id"]
    bob_session = run_of(server, second["message"]["id"], TOKEN_BOB)["session_id"]
    assert alice_session != bob_session

    client = NodeScript(
        node,
        "ui_chat.mjs",
        {
            "api": api,
            "headers": alice,
            "chatId": "shared-id",
            "messages": [user_message("[[fake tokens=6 stall_after=2]] more")],
            "body": {"resume": True},
            "notifyAfterDeltas": 2,
        },
    )
    try:
        client.expect("deltas")
        # Bob's chat of the same id has no live run, whatever Alice's has.
        other = run_script(
            node,
            "ui_chat.mjs",
            {"api": api, "headers": bob, "action": "reconnect", "chatId": "shared-id"},
        )
        assert other["noStream"] is True
        no_token = httpx.get(f"{api}/shared-id/stream", timeout=10)
        assert no_token.status_code == 401
        fake.fake.release()
        client.result()
    finally:
        client.close()


def test_the_stream_speaks_the_sdks_protocol_headers(client: httpx.Client) -> None:
    body = {
        "id": "h",
        "messages": [user_message("[[fake tokens=2]] hi")],
        "trigger": "submit-message",
    }
    with client.stream("POST", API, json={**body, "sdkExtra": {"ignored": True}}) as response:
        assert response.status_code == 200
        assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-ratelimit-limit"]
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"id": "x", "messages": []}, 422),
        (
            {
                "id": "x",
                "messages": [{"role": "assistant", "parts": [{"type": "text", "text": "a"}]}],
            },
            422,
        ),
        ({"id": "x", "messages": [{"role": "user", "parts": [{"type": "file", "url": "u"}]}]}, 422),
        ({"id": "x", "messages": [user_message("   ")]}, 422),
        ({"id": "", "messages": [user_message("hi")]}, 422),
        ({"id": "x" * 201, "messages": [user_message("hi")]}, 422),
        ({"id": "x", "messages": [user_message("hi")], "model": "nope"}, 422),
        ({"id": "never-seen", "messages": [], "trigger": "regenerate-message"}, 404),
    ],
    ids=[
        "no messages",
        "no user message",
        "no text",
        "blank",
        "empty id",
        "long id",
        "model",
        "regen",
    ],
)
def test_bad_requests_are_refused_before_anything_is_stored(
    client: httpx.Client, body: dict[str, Any], status: int
) -> None:
    response = client.post(API, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] in {"invalid_request", "not_found"}
    assert client.get("/api/sessions").json()["items"] == []


def test_the_readme_example_runs_as_shown(node: str, server: AppServer) -> None:
    script = readme_block("js", "readUIMessageStream")
    # The Next.js page in the README builds the very same transport.
    transport = re.search(r"new DefaultChatTransport\(\{.*?\}\)", script)
    assert transport is not None and transport.group(0) in readme_block("tsx", "useChat")
    assert SHOWN_URL in script

    shown = subprocess.run(
        [node, "--input-type=module", "--eval", script.replace(SHOWN_URL, server.base_url)],
        cwd=CLIENTS_DIR,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout

    (session,) = httpx.get(f"{server.base_url}/api/sessions", timeout=10).json()["items"]
    user, answer = stored(server, session["id"])
    assert user["content"] == "Hello!"
    assert shown == answer["content"] + "\n" and answer["status"] == "complete"


def test_what_is_sent_is_what_openapi_describes(server: AppServer) -> None:
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    operation = schema["/api/ui/chat"]["POST"]
    for text in (
        "[[fake tool=get_current_time preamble=2 tokens=3]] with a tool round",
        "[[fake status=500]] failing",
    ):
        body = {"id": f"described-{len(text)}", "messages": [user_message(text)]}
        # Every event is checked against the response's itemSchema (chunks have no other keys).
        response = operation.Case(body=body).call_and_validate()
        assert response.status_code == 200
    resume = schema["/api/ui/chat/{chat_id}/stream"]["GET"]
    assert (
        resume.Case(path_parameters={"chat_id": "described-1"}).call_and_validate().status_code
        == 204
    )
