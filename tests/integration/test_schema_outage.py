"""A database without chatstream's tables answers 503 `database_unavailable`, not 500."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic import command
from sqlalchemy.engine import make_url

from chatstream.storage.migrations import alembic_config
from tests.support.servers import AppServer
from tests.support.services import fresh_postgres_database, service_url


@pytest.fixture
def migrated_postgres() -> Iterator[str]:
    with fresh_postgres_database(
        service_url("CHATSTREAM_TEST_POSTGRES_URL"), "chatstream_schema"
    ) as url:
        command.upgrade(alembic_config(url), "head")
        yield url


def drop_postgres_tables(url: str) -> None:
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

    async def drop() -> None:
        connection = await asyncpg.connect(plain)
        try:
            await connection.execute("DROP TABLE messages; DROP TABLE sessions")
        finally:
            await connection.close()

    asyncio.run(drop())


def assert_schema_unavailable(client: httpx.Client) -> None:
    for method, path, body in [
        ("GET", "/api/sessions", None),
        ("POST", "/api/sessions", {"title": "x"}),
        ("GET", f"/api/sessions/{uuid.uuid4()}", None),
        ("POST", "/api/chat/stream", {"message": "hi"}),
        ("POST", "/api/chat", {"message": "hi"}),
    ]:
        response = client.request(method, path, json=body)
        assert response.status_code == 503, (method, path, response.text)
        error = response.json()["error"]
        assert error["code"] == "database_unavailable"
        assert "chatstream migrate" in error["message"]


@pytest.mark.postgres
def test_missing_tables_on_postgres_are_503_not_500(
    make_server: Callable[..., AppServer], migrated_postgres: str
) -> None:
    server = make_server(database_url=migrated_postgres)
    drop_postgres_tables(migrated_postgres)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        assert_schema_unavailable(client)


def test_missing_tables_on_sqlite_are_503_not_500(
    make_server: Callable[..., AppServer], database_path: Path
) -> None:
    server = make_server()
    with sqlite3.connect(database_path) as db:
        db.execute("DROP TABLE messages")
        db.execute("DROP TABLE sessions")
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        assert_schema_unavailable(client)
