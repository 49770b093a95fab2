"""A database outage, seen by a caller: `DatabaseUnavailable` (a 503), never a 500.

`outage_is_unavailable` wraps every `Store` method but the run's final write
(whose caller keeps the rows in the spool instead): a database that cannot be
reached, stays locked, times out, or lacks a table of this release's schema.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError

from chatstream.errors import DatabaseUnavailable

logger = logging.getLogger("chatstream.storage.repository")  # (where operators know it from)

P = ParamSpec("P")
R = TypeVar("R")


def outage_is_unavailable(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """A database that cannot be reached, stays locked or lacks a table is a 503, not a 500."""

    @functools.wraps(method)
    async def translated(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except (
            OperationalError,
            InterfaceError,
            ProgrammingError,
            SQLAlchemyTimeoutError,
            OSError,
        ) as exc:
            if _schema_is_missing(exc):
                logger.warning(
                    "database schema is not current (%s): run `chatstream migrate`",
                    type(getattr(exc, "orig", exc)).__name__,
                )
                raise DatabaseUnavailable(SCHEMA_MISSING_MESSAGE) from None
            if isinstance(exc, ProgrammingError):
                raise  # a bug of ours, not an outage
            logger.warning("database unavailable (%s)", type(exc).__name__)
            raise DatabaseUnavailable() from None

    return translated


SCHEMA_MISSING_MESSAGE = (
    "The database is not at this server's schema; the operator must run `chatstream migrate`."
)
# PostgreSQL: undefined table, undefined column. SQLite says it in words.
_SCHEMA_SQLSTATES = frozenset({"42P01", "42703"})
_SCHEMA_WORDS = ("no such table", "no such column", "has no column named")


def _schema_is_missing(exc: Exception) -> bool:
    orig = getattr(exc, "orig", None)
    if str(getattr(orig, "sqlstate", "")) in _SCHEMA_SQLSTATES:
        return True
    return any(words in str(orig or "") for words in _SCHEMA_WORDS)
