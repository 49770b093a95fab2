"""Engines and session factories.

Two factories: `writer` for transactions that change rows and `reader` for
the rest. On PostgreSQL they share one engine. On SQLite the writer is a
single connection: writers queue in the pool (in asyncio, cheaply) instead of
racing inside SQLite. Its transactions begin implicitly at their first
INSERT, UPDATE or DELETE (the sqlite3 driver's own behaviour), and every
write transaction chatstream runs starts with one, so none ever reads first
and then upgrades to a write, the pattern that fails at once with
SQLITE_BUSY_SNAPSHOT whatever the busy timeout; and no separate BEGIN
statement costs a round trip to the driver's thread. Readers keep their own
connections, each query its own implicit read transaction; WAL mode lets
them run beside the writer.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from chatstream.config import Settings
from chatstream.storage.migrations import check_schema


class Database:
    def __init__(
        self, url: str, *, pool_size: int = 10, max_overflow: int = 20, busy_timeout_s: float = 5.0
    ) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            # Every use of the writer is an `engine.begin()` block that commits or
            # rolls back, so the pool's ROLLBACK on check-in would be a round trip
            # to the driver's thread for nothing.
            self.write_engine = create_async_engine(
                url, pool_size=1, max_overflow=0, pool_timeout=60, pool_reset_on_return=None
            )
            self.read_engine = create_async_engine(
                url, pool_size=4, max_overflow=4, pool_timeout=60
            )
            for engine in (self.write_engine, self.read_engine):
                _configure_sqlite(engine, busy_timeout_ms=int(busy_timeout_s * 1000))
        else:
            self.write_engine = create_async_engine(
                url, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True
            )
            self.read_engine = self.write_engine
        self.writer = async_sessionmaker(self.write_engine, expire_on_commit=False)
        self.reader = async_sessionmaker(self.read_engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(settings.database_url, busy_timeout_s=settings.database_busy_timeout_s)

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

    async def check_schema(self) -> None:
        """Raise `SchemaOutdated` unless the schema is at this release's revision."""
        await check_schema(self.read_engine)

    async def aclose(self) -> None:
        for engine in self.engines:
            await engine.dispose()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _configure_sqlite(engine: AsyncEngine, *, busy_timeout_ms: int) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
