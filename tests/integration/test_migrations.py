"""Alembic migrations: a database made by the previous schema, with data, upgrades to this
release's; the models and the migrations describe the same schema."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from chatstream.cli import alembic_config
from chatstream.storage.models import Base
from tests.integration.conftest import _execute, _plain_dsn
from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.services import service_url

# The tables as 0007 left them, as far as these tests write and read them.
SESSIONS = sa.table(
    "sessions",
    sa.column("id", sa.Uuid),
    sa.column("owner", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("updated_at", sa.DateTime(timezone=True)),
    sa.column("active_leaf_id", sa.Uuid),
)
MESSAGES = sa.table(
    "messages",
    sa.column("id", sa.Uuid),
    sa.column("session_id", sa.Uuid),
    sa.column("owner", sa.String),
    sa.column("role", sa.String),
    sa.column("content", sa.Text),
    sa.column("status", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("parent_id", sa.Uuid),
)


def _fill_0007(connection: Connection, owner: str = "alice") -> dict[uuid.UUID, list[uuid.UUID]]:
    """Two sessions of a few messages each and one empty session, as 0007 wrote them."""
    now = datetime.now(UTC)
    made: dict[uuid.UUID, list[uuid.UUID]] = {}
    for count in (3, 5, 0):
        session_id = uuid.uuid4()
        connection.execute(
            sa.insert(SESSIONS).values(id=session_id, owner=owner, created_at=now, updated_at=now)
        )
        made[session_id] = []
        for n in range(count):
            message_id = uuid.uuid4()
            connection.execute(
                sa.insert(MESSAGES).values(
                    id=message_id,
                    session_id=session_id,
                    owner=owner,
                    role="user" if n % 2 == 0 else "assistant",
                    content=f"message {n}",
                    status="complete",
                    created_at=now,
                )
            )
            made[session_id].append(message_id)
    return made


def _read_tree(
    connection: Connection,
) -> tuple[dict[uuid.UUID, uuid.UUID | None], dict[uuid.UUID, uuid.UUID | None]]:
    parents = {
        row.id: row.parent_id
        for row in connection.execute(sa.select(MESSAGES.c.id, MESSAGES.c.parent_id))
    }
    leaves = {
        row.id: row.active_leaf_id
        for row in connection.execute(sa.select(SESSIONS.c.id, SESSIONS.c.active_leaf_id))
    }
    return parents, leaves


def _drift(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


async def _run(url: str, step: object) -> object:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            return await connection.run_sync(step)  # type: ignore[arg-type]
    finally:
        await engine.dispose()


def _upgrade_with_data(url: str) -> None:
    command.upgrade(alembic_config(url), "0007")  # type: ignore[arg-type]
    made = asyncio.run(_run(url, _fill_0007))
    command.upgrade(alembic_config(url), "head")  # type: ignore[arg-type]
    parents, leaves = asyncio.run(_run(url, _read_tree))
    assert isinstance(made, dict)
    for session_id, chain in made.items():
        # Each session is one branch: every message follows the one written before it.
        assert [parents[m] for m in chain] == [None, *chain][: len(chain)]
        assert leaves[session_id] == (chain[-1] if chain else None)
    assert asyncio.run(_run(url, _drift)) == []


def test_a_0007_sqlite_database_with_data_upgrades_to_one_branch_per_session(
    tmp_path: Path,
) -> None:
    _upgrade_with_data(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")


@pytest.mark.postgres
def test_a_0007_postgres_database_with_data_upgrades_to_one_branch_per_session() -> None:
    base = service_url("CHATSTREAM_TEST_POSTGRES_URL")
    name = f"chatstream_test_m{uuid.uuid4().hex[:12]}"
    asyncio.run(_execute(_plain_dsn(base), f'CREATE DATABASE "{name}"'))
    try:
        _upgrade_with_data(make_url(base).set(database=name).render_as_string(hide_password=False))
    finally:
        asyncio.run(_execute(_plain_dsn(base), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_an_upgraded_session_is_served_as_one_branch_and_goes_on_from_its_last_message(
    tmp_path: Path, make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0007")  # type: ignore[arg-type]
    made = asyncio.run(_run(url, lambda connection: _fill_0007(connection, "anonymous")))
    command.upgrade(alembic_config(url), "head")  # type: ignore[arg-type]
    assert isinstance(made, dict)
    session_id, chain = next((s, c) for s, c in made.items() if len(c) == 5)
    server = make_server(database_url=url)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        listed = client.get(f"/api/sessions/{session_id}/messages").json()["items"]
        assert [m["id"] for m in listed] == [str(m) for m in chain]
        assert all(m["sibling_count"] == 1 for m in listed)
        sent = client.post(
            "/api/chat", json={"message": "[[fake tokens=1]] next", "session_id": str(session_id)}
        )
        assert sent.status_code == 200, sent.text
        contents = [m["content"] for m in fake.fake.requests[-1]["messages"]]
        assert contents == [f"message {n}" for n in range(5)] + ["[[fake tokens=1]] next"]
        assert sent.json()["message"]["parent_id"] != str(chain[-1])  # its question's
        edited = client.post(
            f"/api/sessions/{session_id}/messages/{chain[2]}/edit",
            json={"content": "[[fake tokens=1]] message 2, edited"},
        )
        assert edited.status_code == 200, edited.text
        assert [m["content"] for m in fake.fake.requests[-1]["messages"]] == [
            "message 0",
            "message 1",
            "[[fake tokens=1]] message 2, edited",
        ]
