"""`/v1` content parts (issue #26 item 4): images, audio and files reach the model as sent,
are stored once each by content hash, and replay when a session continues.

Driven by the OpenAI Python SDK against real uvicorn, the fake upstream and a
real SQLite file, read back with `sqlite3` to see what is stored.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from alembic import command

from chatstream.cli import alembic_config
from tests.support.servers import AppServer, FakeUpstreamThread

SESSION = "x-chatstream-session-id"
PIXEL = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n tiny").decode()
AUDIO = base64.b64encode(b"RIFF....WAVEfmt ").decode()


@pytest.fixture
def client(server: AppServer) -> Iterator[openai.OpenAI]:
    sdk = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    yield sdk
    sdk.close()


def looking(text: str) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": PIXEL, "detail": "low"}},
        ],
    }


def rows(database_path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(database_path) as db:
        return db.execute(sql).fetchall()


def test_parts_reach_the_model_as_sent_and_each_payload_is_stored_once(
    client: openai.OpenAI, fake: FakeUpstreamThread, database_path: Path
) -> None:
    listening = {
        "role": "user",
        "content": [
            {"type": "text", "text": "[[fake tokens=2]] and this?"},
            {"type": "input_audio", "input_audio": {"data": AUDIO, "format": "wav"}},
            {"type": "image_url", "image_url": {"url": PIXEL, "detail": "low"}},
        ],
    }
    given: list[Any] = [
        looking("what is this?"),
        {"role": "assistant", "content": "a pixel"},
        listening,
    ]
    client.chat.completions.create(model="test-model", messages=given)

    assert fake.fake.requests[-1]["messages"] == given
    stored = rows(database_path, "SELECT hash, kind, data FROM attachments ORDER BY kind")
    # The same image twice is one row; each row is its payload's SHA-256.
    assert [(kind, data) for _, kind, data in stored] == [
        ("image_url", PIXEL),
        ("input_audio", AUDIO),
    ]
    assert all(h == hashlib.sha256(d.encode()).hexdigest() for h, _, d in stored)
    messages = rows(database_path, "SELECT role, content, parts FROM messages ORDER BY pk")
    user = [(content, json.loads(parts)) for role, content, parts in messages if role == "user"]
    assert user[0][0] == "what is this?"
    image = user[0][1][1]["image_url"]
    assert image == {"url": f"chatstream-attachment:sha256:{stored[0][0]}", "detail": "low"}
    assert PIXEL not in json.dumps([parts for _, parts in user])  # by reference only


def test_a_continued_session_sends_its_stored_images_again(
    client: openai.OpenAI, fake: FakeUpstreamThread
) -> None:
    first = client.chat.completions.with_raw_response.create(
        model="test-model", messages=[looking("[[fake tokens=2]] what is this?")]
    )
    session_id = first.headers[SESSION]
    answer = first.parse().choices[0].message.content

    client.chat.completions.create(
        model="test-model",
        messages=[looking("[[fake tokens=1]] and now?")],
        extra_headers={"X-Chatstream-Session-Id": session_id},
    )
    assert fake.fake.requests[-1]["messages"] == [
        looking("[[fake tokens=2]] what is this?"),
        {"role": "assistant", "content": answer},
        looking("[[fake tokens=1]] and now?"),
    ]


def test_an_image_for_a_model_without_vision_is_a_bad_request(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    server = make_server(models_without_vision=["other-model"])
    sdk = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    with sdk:
        with pytest.raises(openai.BadRequestError) as raised:
            sdk.chat.completions.create(
                model="other-model",
                messages=[{"role": "user", "content": "hi"}, looking("this?")],  # type: ignore[list-item]
            )
        assert raised.value.param == "messages.[1].content.[1]"
        assert "CHATSTREAM_MODELS_WITHOUT_VISION" in raised.value.message
        seen = len(fake.fake.requests)
        sdk.chat.completions.create(model="test-model", messages=[looking("[[fake tokens=1]] a")])
        assert len(fake.fake.requests) == seen + 1


def test_the_migration_keeps_existing_messages(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    config = alembic_config(f"sqlite+aiosqlite:///{path}")
    command.upgrade(config, "0006")  # type: ignore[arg-type]
    session_id, message_id = uuid.uuid4().hex, uuid.uuid4().hex
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO sessions (id, owner, created_at, updated_at) VALUES (?, 'o', "
            "'2026-12-01 00:00:00', '2026-12-01 00:00:00')",
            (session_id,),
        )
        db.execute(
            "INSERT INTO messages (id, session_id, owner, role, content, status, created_at) "
            "VALUES (?, ?, 'o', 'user', 'kept', 'complete', '2026-12-01 00:00:00')",
            (message_id, session_id),
        )
    command.upgrade(config, "head")  # type: ignore[arg-type]

    assert rows(path, "SELECT id, content, parts FROM messages") == [(message_id, "kept", None)]
    assert rows(path, "SELECT count(*) FROM attachments") == [(0,)]
