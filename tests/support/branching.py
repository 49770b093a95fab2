"""For the tests of branches (edits, regenerations, switching): the database
fixture both e2e modules run on (SQLite, and PostgreSQL), and readers of what
a session holds and what the model was given."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from alembic import command

from chatstream.cli import alembic_config
from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.services import fresh_postgres_database, service_url
from tests.support.sse import Stream, read_stream

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


def stream_chat(client: httpx.Client, message: str, **body: Any) -> dict[str, Any]:
    """One native chat, streamed to its end; its `start` event."""
    with client.stream("POST", "/api/chat/stream", json={"message": message, **body}) as r:
        assert r.status_code == 200, r.read()
        stream = read_stream(r)
    assert stream.done["status"] == "complete", stream.events
    return stream.events[0].data


def streamed(response: httpx.Response) -> Stream:
    assert response.status_code == 200, response.read()
    assert response.headers["content-type"].startswith("text/event-stream")
    return read_stream(response)


def branch(client: httpx.Client, session_id: str, **params: Any) -> list[dict[str, Any]]:
    """The session's active branch, as `GET …/messages` lists it."""
    response = client.get(f"/api/sessions/{session_id}/messages", params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def every_row(server: AppServer, session_id: str, owner: str = "anonymous") -> list[Any]:
    """Every stored message of the session, of every branch, in the order written."""
    store = server.state.store
    page = server.call(
        lambda: store.list_messages(owner, uuid.UUID(session_id), limit=200, before=None)
    )
    return list(page.items)


def context_of(fake: FakeUpstreamThread) -> list[str]:
    """The contents of the messages the model was last given."""
    return [m["content"] for m in fake.fake.requests[-1]["messages"]]
