"""Engines and session factories.

Two factories: `writer` for transactions that change rows and `reader` for
the rest. On PostgreSQL they share one engine. On SQLite the writer is one
connection that opens every transaction with `BEGIN IMMEDIATE`: writers
queue in the pool (in asyncio, cheaply) instead of racing inside SQLite,
where a read-then-write transaction that loses the race fails at once with
SQLITE_BUSY_SNAPSHOT, which no busy timeout can cure. Readers keep their own
connections; WAL mode lets them run beside the writer.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from chatstream.config import Settings

SQLITE_BUSY_TIMEOUT_MS = 5000


class Database:
    def __init__(self, url: str, *, pool_size: int = 10, max_overflow: int = 20) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.write_engine = create_async_engine(
                url, pool_size=1, max_overflow=0, pool_timeout=60
            )
            self.read_engine = create_async_engine(
                url, pool_size=4, max_overflow=4, pool_timeout=60
            )
            _configure_sqlite(self.write_engine, begin="BEGIN IMMEDIATE")
            _configure_sqlite(self.read_engine, begin="BEGIN")
        else:
            self.write_engine = create_async_engine(
                url, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True
            )
            self.read_engine = self.write_engine
        self.writer = async_sessionmaker(self.write_engine, expire_on_commit=False)
        self.reader = async_sessionmaker(self.read_engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(settings.database_url)

    @property
    def engines(self) -> list[AsyncEngine]:
        return (
            [self.write_engine]
            if self.read_engine is self.write_engine
            else [
                self.write_engine,
                self.read_engine,
            ]
        )

    async def ping(self) -> None:
        async with self.read_engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def aclose(self) -> None:
        for engine in self.engines:
            await engine.dispose()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _configure_sqlite(engine: AsyncEngine, *, begin: str) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # We emit BEGIN ourselves (below); the driver must not.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql(begin)
