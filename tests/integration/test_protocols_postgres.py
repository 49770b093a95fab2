"""The protocol adapters' storage paths on real PostgreSQL: chat ids, re-answers, given context.

The clients' own libraries are exercised in tests/e2e; here plain HTTP is
enough to drive what the adapters store.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from tests.support.servers import AppServer


def ui_chat(client: httpx.Client, chat_id: str, text: str, **body: Any) -> str:
    """Send through /api/ui/chat; the run's message id (from the `start` chunk)."""
    message = {"id": "u", "role": "user", "parts": [{"type": "text", "text": text}]}
    with client.stream(
        "POST", "/api/ui/chat", json={"id": chat_id, "messages": [message], **body}
    ) as response:
        assert response.status_code == 200, response.read()
        lines = [line for line in response.iter_lines() if line.startswith("data: {")]
    chunks = [json.loads(line[6:]) for line in lines]
    assert chunks[-1]["type"] == "finish"
    return str(chunks[0]["messageId"])


def session_of(client: httpx.Client, message_id: str) -> str:
    return str(client.get(f"/api/runs/{message_id}").json()["session_id"])


def test_chat_ids_and_reanswers_on_postgres(
    make_server: Callable[..., AppServer], postgres_url: str
) -> None:
    server = make_server(database_url=postgres_url)
    chat_id = f"pg-{uuid.uuid4().hex}"
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        first = ui_chat(client, chat_id, "[[fake tokens=3]] one")
        second = ui_chat(client, chat_id, "[[fake tokens=3]] two")
        session = session_of(client, first)
        assert session_of(client, second) == session
        again = ui_chat(client, chat_id, "ignored", trigger="regenerate-message")
        # The answer again is shown, the earlier one kept as its sibling.
        rows = client.get(f"/api/sessions/{session}/messages").json()["items"]
        assert [(r["role"], r["id"]) for r in rows][-2:] == [
            ("user", rows[2]["id"]),
            ("assistant", again),
        ]
        assert rows[3]["sibling_ids"] == [second, again]
        assert rows[2]["content"] == "[[fake tokens=3]] two"
        assert client.get(f"/api/ui/chat/{chat_id}/stream").status_code == 204


def test_a_given_context_is_kept_on_postgres(
    make_server: Callable[..., AppServer], postgres_url: str
) -> None:
    server = make_server(database_url=postgres_url)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        response = client.post(
            "/v1/chat/completions",
            json={
                "model": "test-model",
                "messages": [
                    {"role": "developer", "content": "Be brief."},
                    {"role": "user", "content": "q1"},
                    {"role": "assistant", "content": "a1"},
                    {"role": "user", "content": "[[fake tokens=2]] q2"},
                ],
            },
        )
        assert response.status_code == 200, response.text
        session = response.headers["x-chatstream-session-id"]
        assert client.get(f"/api/sessions/{session}").json()["system_prompt"] == "Be brief."
        rows = client.get(f"/api/sessions/{session}/messages").json()["items"]
        assert [r["content"] for r in rows] == [
            "q1",
            "a1",
            "[[fake tokens=2]] q2",
            response.json()["choices"][0]["message"]["content"],
        ]
