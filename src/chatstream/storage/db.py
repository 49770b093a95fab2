"""Engines, and the one way rows are changed: `Database.write`.

Reads go through `reader` (async sessions of `engine`). Writes are
synchronous transaction bodies, `work(connection, *args)`, that
`Database.write` runs in one transaction:

- on SQLite, in a writer thread of its own, on a single synchronous
  connection: a whole transaction is one trip from the event loop and back,
  where the async driver makes three per statement (each a wait for the
  driver's thread and for a turn of the loop, which under load is most of a
  write's time). Writers queue for the thread instead of racing inside
  SQLite. A transaction begins implicitly at its first INSERT, UPDATE or
  DELETE (the sqlite3 driver's own behaviour), and every write chatstream
  makes starts with one (a read before it, as `update_session`'s, runs
  outside the transaction), so none ever reads inside a transaction and
  then upgrades to a write, the pattern that fails at once with
  SQLITE_BUSY_SNAPSHOT whatever the busy timeout. Readers keep their own
  connections, each query its own implicit read transaction; WAL mode lets
  them run beside the writer.
- on PostgreSQL, through `AsyncConnection.run_sync` on the one async
  engine's pool: the same bodies, many writers at once.

A caller that stops waiting (cancelled, timed out) drops its write if it has
not begun; one that has begun finishes in its thread, committed or rolled
back whole, never cut midway (so a caller cancelled in that moment does not
know that its rows were written). A write that waited over a minute for the
writer thread is refused with the pool's timeout error, as on PostgreSQL.

Every engine hides statement parameters from its errors: they are what
people wrote, and an error's text ends up in the log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from chatstream.config import Settings
from chatstream.storage.migrations import check_schema

# SQLite: a write that waited this long for the writer thread is refused (as
# the pool's timeout refuses one that waited for a connection on PostgreSQL).
WRITE_QUEUE_TIMEOUT_S = 60.0
P = ParamSpec("P")
R = TypeVar("R")


class Database:
    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        max_overflow: int = 20,
        busy_timeout_s: float = 5.0,
        queue_timeout_s: float = WRITE_QUEUE_TIMEOUT_S,
    ) -> None:
        self.url = url
        self._queue_timeout_s = queue_timeout_s
        self.is_sqlite = url.startswith("sqlite")
        self._sqlite_writer: Engine | None = None
        self._writer_thread: ThreadPoolExecutor | None = None
        if self.is_sqlite:
            self.engine = create_async_engine(
                url, pool_size=4, max_overflow=4, pool_timeout=60, hide_parameters=True
            )
            _configure_sqlite(self.engine.sync_engine, busy_timeout_s)
            # One connection, used by one thread only. Every use is an
            # `engine.begin()` block that commits or rolls back, so the pool's
            # ROLLBACK on check-in would be work for nothing.
            self._sqlite_writer = create_engine(
                make_url(url).set(drivername="sqlite"),
                pool_size=1,
                max_overflow=0,
                pool_reset_on_return=None,
                hide_parameters=True,
            )
            _configure_sqlite(self._sqlite_writer, busy_timeout_s)
            self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        else:
            self.engine = create_async_engine(
                url,
                pool_size=pool_size,
                max_overflow=max_overflow,
                pool_pre_ping=True,
                hide_parameters=True,
            )
        self.reader = async_sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(settings.database_url, busy_timeout_s=settings.database_busy_timeout_s)

    async def write(
        self, work: Callable[Concatenate[Connection, P], R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """`work(connection, *args, **kwargs)` in one transaction, committed when it returns.

        An exception it raises rolls the transaction back and is raised here.
        """
        if not self.is_sqlite:
            async with self.engine.begin() as connection:
                return await connection.run_sync(work, *args, **kwargs)
        if self._writer_thread is None:
            raise RuntimeError("write to a closed Database")
        queued_at = time.monotonic()
        return await asyncio.get_running_loop().run_in_executor(
            self._writer_thread, lambda: self._write_in_thread(work, args, kwargs, queued_at)
        )

    def _write_in_thread(
        self,
        work: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        queued_at: float,
    ) -> R:
        if time.monotonic() - queued_at > self._queue_timeout_s:
            # As a pool that has no connection to give in time: the caller
            # answers 503, rather than a queue that only ever grows.
            raise SQLAlchemyTimeoutError(
                f"the SQLite writer was busy for over {self._queue_timeout_s:.0f} s"
            )
        assert self._sqlite_writer is not None
        with self._sqlite_writer.begin() as connection:
            return work(connection, *args, **kwargs)

    async def ping(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def check_schema(self) -> None:
        """Raise `SchemaOutdated` unless the schema is at this release's revision."""
        await check_schema(self.engine)

    async def aclose(self) -> None:
        await self.engine.dispose()
        if self._writer_thread is not None and self._sqlite_writer is not None:
            # Closed in its own thread (sqlite3 connections belong to theirs),
            # after any write still queued there.
            writer_thread, self._writer_thread = self._writer_thread, None
            await asyncio.get_running_loop().run_in_executor(
                writer_thread, self._sqlite_writer.dispose
            )
            writer_thread.shutdown(wait=False)

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _configure_sqlite(engine: Engine, busy_timeout_s: float) -> None:
    busy_timeout_ms = int(busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
