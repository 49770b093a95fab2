"""The database schema: which revision it is at, and bringing it to this release's (Alembic).

    chatstream migrate                 upgrade to head (under the lock below)
    chatstream serve                   the same at start-up (CHATSTREAM_AUTO_MIGRATE=true), or
                                       refuse to start on an older schema (false)
    GET /readyz                        `database: outdated` while the schema is not head

On PostgreSQL an upgrade runs under a session-level advisory lock, so that
instances starting together migrate once: the first takes the lock and
upgrades; the others wait for it, find the schema current and go on. The
revision is read first without the lock, so a current schema costs one
SELECT. (SQLite has no such lock; its file is one instance's anyway.)

Upgrades run on the caller's own async connection, handed to `alembic/env.py`
through `config.attributes["connection"]` (Alembic's documented recipe), so
nothing here starts a second event loop.

Alembic (with Mako and Pygments behind it) is imported only to upgrade: it
would otherwise stay resident in every server process (~10 MB, about a
tenth of an idle server) for something a current schema never needs. So
this release's revision is written here, `HEAD_REVISION`, and a test holds
it equal to the head of `alembic/versions`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chatstream.config import ConfigurationError

if TYPE_CHECKING:
    from alembic.config import Config

logger = logging.getLogger(__name__)

# pg_advisory_lock key: any constant 64-bit number, the same in every instance.
MIGRATION_LOCK_KEY = 0x63687374726D6967  # "chstrmig"


VERSION_TABLE = "alembic_version"

# This release's schema revision: the newest file of alembic/versions
# (tests/e2e/test_lean_process.py fails when a migration is added without it).
HEAD_REVISION = "0009"


class SchemaOutdated(Exception):
    """The database is not at this release's schema revision."""

    def __init__(self, current: str | None, head: str) -> None:
        self.current = current
        self.head = head
        super().__init__(f"schema at revision {current or 'none (empty database)'}, needs {head}")


def alembic_config(database_url: str) -> Config:
    from alembic.config import Config  # only to migrate (see the module's docstring)

    ini = find_alembic_ini()
    config = Config(str(ini))
    config.set_main_option("script_location", str(ini.parent / "alembic"))
    config.attributes["database_url"] = database_url
    config.attributes["skip_logging_config"] = True
    return config


def find_alembic_ini() -> Path:
    candidates = (
        [Path(os.environ["CHATSTREAM_ALEMBIC_INI"])]
        if "CHATSTREAM_ALEMBIC_INI" in os.environ
        else []
    )
    candidates.append(Path.cwd() / "alembic.ini")
    candidates.extend(parent / "alembic.ini" for parent in Path(__file__).resolve().parents)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigurationError(
        "alembic.ini (the database migrations) not found: run from the project directory "
        "or set CHATSTREAM_ALEMBIC_INI"
    )


def _current(connection: Connection) -> str | None:
    # Read directly: Alembic's MigrationContext logs two INFO lines per use,
    # and /readyz asks on every probe.
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


async def current_revision(connection: AsyncConnection) -> str | None:
    return await connection.run_sync(_current)


async def check_schema(engine: AsyncEngine) -> None:
    """Raise `SchemaOutdated` unless the database is at this release's revision."""
    async with engine.connect() as connection:
        current = await current_revision(connection)
    if current != HEAD_REVISION:
        raise SchemaOutdated(current, HEAD_REVISION)


async def bring_to_head(engine: AsyncEngine, *, upgrade: bool) -> str | None:
    """Make sure the schema is current; return the revision it was upgraded from, if it was.

    With `upgrade=False` an outdated schema raises `SchemaOutdated` instead.
    """
    head = HEAD_REVISION
    async with engine.connect() as connection:
        current = await current_revision(connection)
        await connection.rollback()
        if current == head:
            return None
        if not upgrade:
            raise SchemaOutdated(current, head)
        postgres = connection.dialect.name == "postgresql"
        if postgres:
            await connection.execute(
                text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
            await connection.commit()
        try:
            # Another instance may have upgraded while this one waited for the lock.
            current = await current_revision(connection)
            if current == head:
                await connection.rollback()
                return None
            await connection.run_sync(_upgrade)
            await connection.commit()
        finally:
            if postgres:
                await connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
                await connection.commit()
    logger.info("database schema upgraded from %s to %s", current or "an empty database", head)
    return current or "base"


def _upgrade(connection: Connection) -> None:
    with _alembic_quiet():
        from alembic import command  # only to migrate (see the module's docstring)

        config = alembic_config("unused://")  # the connection is used, not a URL
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


@contextlib.contextmanager
def _alembic_quiet() -> Iterator[None]:
    """Alembic's INFO lines (plugins, "Context impl", each revision run) only at debug level:
    an upgrade says itself in one line, `bring_to_head`'s."""
    alembic_logger = logging.getLogger("alembic")
    previous = alembic_logger.level
    if not logger.isEnabledFor(logging.DEBUG):
        alembic_logger.setLevel(max(logging.WARNING, previous))
    try:
        yield
    finally:
        alembic_logger.setLevel(previous)
