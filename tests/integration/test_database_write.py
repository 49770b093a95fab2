"""`Database.write` on SQLite: one transaction in the writer thread; what a caller that stops
waiting does to it; a write that waited too long, and one after close."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid

import pytest
from sqlalchemy import Connection, func, insert, select
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError

from chatstream.storage.db import Database
from chatstream.storage.models import SessionRow, sessions_table, utcnow


def _insert_session(connection: Connection, title: str) -> str:
    now = utcnow()
    connection.execute(
        insert(sessions_table),
        {"id": uuid.uuid4(), "owner": "o", "title": title, "created_at": now, "updated_at": now},
    )
    return threading.current_thread().name


def _blocked_insert(connection: Connection, started: threading.Event, go: threading.Event) -> None:
    _insert_session(connection, "begun")
    started.set()
    assert go.wait(30)


async def _titles(database: Database) -> list[str]:
    async with database.reader() as db:
        return sorted(await db.scalars(select(SessionRow.title)))


async def _count(database: Database) -> int:
    async with database.reader() as db:
        return int(await db.scalar(select(func.count()).select_from(SessionRow)) or 0)


def test_a_write_runs_whole_in_the_writer_thread_and_a_failure_rolls_it_back(
    database_url: str,
) -> None:
    async def main() -> None:
        async with Database(database_url) as database:
            thread = await database.write(_insert_session, "kept")
            assert thread.startswith("sqlite-writer")

            def fails(connection: Connection) -> None:
                _insert_session(connection, "rolled back")
                raise LookupError("refused")

            with pytest.raises(LookupError):
                await database.write(fails)
            assert await _titles(database) == ["kept"]

    asyncio.run(main())


def test_a_caller_that_stops_waiting_drops_a_queued_write_but_never_cuts_a_begun_one(
    database_url: str,
) -> None:
    async def main() -> None:
        async with Database(database_url) as database:
            started, go = threading.Event(), threading.Event()
            begun = asyncio.create_task(database.write(_blocked_insert, started, go))
            await asyncio.to_thread(started.wait, 30)
            queued = asyncio.create_task(database.write(_insert_session, "queued"))
            await asyncio.sleep(0)  # one step: the task hands its work to the writer thread
            queued.cancel()
            begun.cancel()
            go.set()
            for task in (begun, queued):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await database.write(_insert_session, "after")  # the thread still writes
            assert await _titles(database) == ["after", "begun"]
            assert await _count(database) == 2

    asyncio.run(main())


def test_a_write_that_waited_too_long_for_the_writer_is_refused_as_a_pool_timeout(
    database_url: str,
) -> None:
    async def main() -> None:
        # Every write has waited longer than a negative timeout.
        async with Database(database_url, queue_timeout_s=-1.0) as database:
            with pytest.raises(SQLAlchemyTimeoutError, match="busy"):
                await database.write(_insert_session, "late")
            assert await _count(database) == 0
        with pytest.raises(RuntimeError, match="closed"):
            await database.write(_insert_session, "closed")

    asyncio.run(main())
