"""A fresh PostgreSQL database per test run, migrated by Alembic."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import asyncpg
import pytest
from alembic import command
from sqlalchemy.engine import make_url

from chatstream.cli import alembic_config
from tests.support.services import service_url


def _plain_dsn(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


async def _execute(dsn: str, sql: str) -> None:
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    base = service_url("CHATSTREAM_TEST_POSTGRES_URL")
    name = f"chatstream_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_execute(_plain_dsn(base), f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL at CHATSTREAM_TEST_POSTGRES_URL is unreachable: {exc}")
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    command.upgrade(alembic_config(url), "head")  # type: ignore[arg-type]
    yield url
    asyncio.run(_execute(_plain_dsn(base), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
