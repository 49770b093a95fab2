"""What start-up checks before chatstream says "ready", and how a failed check is told.

The lifespan (`create_app`) does not report ready until

- the database has answered, and its schema is this release's (upgraded at
  start-up with `CHATSTREAM_AUTO_MIGRATE=true`, the default; refused with
  `false`; see `storage.migrations`), and
- Redis has answered, when the limits are kept there, at the database
  number its URL names, and
- the spool directory (`CHATSTREAM_SPOOL_DIR`) can be created and written.

A check that fails raises `StartupError`: one line that names what is
unusable (host and port, never a password) and what to do about it.
`StartupReport` makes that line the only thing the server logs about it:
left alone, Starlette hands uvicorn the whole traceback to log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import anyio
from sqlalchemy.engine import make_url
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatstream.config import ConfigurationError
from chatstream.durability.spool import Spool, SpoolInUse
from chatstream.errors import StartupError
from chatstream.logs import Redactor
from chatstream.storage.db import Database
from chatstream.storage.migrations import SchemaOutdated, bring_to_head

logger = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 10.0  # how long start-up waits for a dependency to answer

# SQLSTATEs a PostgreSQL server answers a connection with, and what they mean to an operator.
_POSTGRES_REFUSALS = {
    "28P01": "refused the password of user {user!r}: check CHATSTREAM_DATABASE_URL",
    "28000": "refused user {user!r}: check CHATSTREAM_DATABASE_URL and pg_hba.conf",
    "3D000": "has no database {database!r}: create it (createdb {database}), "
    "or correct CHATSTREAM_DATABASE_URL",
}


async def prepare_database(
    database: Database, *, auto_migrate: bool, redact: Redactor
) -> str | None:
    """The database answers and is at this release's schema (upgraded if allowed).

    Returns the revision it was upgraded from ("base": an empty database), or
    None when it was current already.
    """
    where = database_location(database.url)
    try:
        with anyio.fail_after(CHECK_TIMEOUT_S):
            await database.ping()
    except Exception as exc:
        raise StartupError(f"{where} {_database_failure(database.url, exc, redact)}") from None
    try:
        return await bring_to_head(database.engine, upgrade=auto_migrate)
    except SchemaOutdated as exc:
        raise StartupError(
            f"{where} has an older schema (revision {exc.current or 'none: an empty database'}; "
            f"this release needs {exc.head}): run `chatstream migrate`, or set "
            "CHATSTREAM_AUTO_MIGRATE=true"
        ) from None
    except Exception as exc:
        raise StartupError(
            f"upgrading the schema of {where} failed ({_first_line(exc, redact)}): "
            "run `chatstream migrate` to see why"
        ) from None


def database_location(url: str) -> str:
    """'the database at host:port' or 'the SQLite database at path': never the password."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"the SQLite database at {parsed.database or ':memory:'}"
    return f"the database at {parsed.host or 'localhost'}:{parsed.port or 5432}"


def redis_failure(url: str, exc: BaseException, variable: str) -> StartupError:
    parsed = make_url(url)
    where = f"Redis at {parsed.host or 'localhost'}:{parsed.port or 6379} ({variable})"
    refusal = _redis_refusal(exc)
    if refusal is not None and "DB index" in refusal:
        # SELECT of a database the server does not have (redis://host:6379/99).
        return StartupError(
            f"{where} has no database {parsed.database or '?'} (Redis: {refusal}): a server "
            "has 16 (0-15) unless its `databases` setting says otherwise; correct the "
            f"number after the port in {variable} (redis://host:6379/0)"
        )
    if refusal is not None:
        return StartupError(f"{where} refused to serve chatstream ({refusal}): correct {variable}")
    cause = _os_cause(exc)
    if isinstance(exc, TimeoutError) and cause is None:
        said = f"did not answer within {CHECK_TIMEOUT_S:g} s"
    elif cause is not None:
        said = f"is unreachable ({_describe_os_error(cause)})"
    else:
        said = f"failed ({type(exc).__name__})"
    return StartupError(f"{where} {said}: start it, or correct {variable}")


def _redis_refusal(exc: BaseException) -> str | None:
    """The first line of an error reply Redis gave (`ERR DB index is out of range`), if any."""
    from redis.exceptions import ResponseError  # only called with Redis in use

    for cause in _chain(exc):
        if isinstance(cause, ResponseError):
            text = str(cause).strip().splitlines()
            return text[0][:200] if text else type(cause).__name__
    return None


def open_spool(directory: Path) -> Spool:
    """The spool at CHATSTREAM_SPOOL_DIR, or a `StartupError` that says why it cannot be used.

    Blocking file I/O, like `Spool` itself: run it in a worker thread.
    """
    with spool_checked(directory):
        return Spool(directory)


@contextlib.contextmanager
def spool_checked(directory: Path) -> Iterator[None]:
    """Turn what goes wrong with the spool directory into the one line an operator needs."""
    try:
        yield
    except SpoolInUse as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(
            f"the spool directory {directory.absolute()} (CHATSTREAM_SPOOL_DIR) cannot be used: "
            f"{_spool_problem(exc)}; point CHATSTREAM_SPOOL_DIR at a directory this process "
            "can create and write"
        ) from None


def _spool_problem(error: OSError) -> str:
    named = Path(os.fsdecode(error.filename)) if error.filename else None
    if named is not None and isinstance(error, NotADirectoryError | FileExistsError):
        for path in (named, *named.parents):
            if path.exists() and not path.is_dir():
                return f"{path} is a file, not a directory"
    if named is not None and isinstance(error, PermissionError):
        return f"permission denied on {named}"
    return _describe_os_error(error) + (f" ({named})" if named is not None else "")


def _database_failure(url: str, exc: BaseException, redact: Redactor) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        if not path.parent.exists():
            return (
                f"cannot be created: the directory {path.parent} does not exist; create it, "
                "or correct CHATSTREAM_DATABASE_URL"
            )
        return f"cannot be opened ({_first_line(exc, redact)}): check CHATSTREAM_DATABASE_URL"
    for cause in _chain(exc):
        refusal = _POSTGRES_REFUSALS.get(str(getattr(cause, "sqlstate", "")))
        if refusal is not None:
            return refusal.format(user=parsed.username or "", database=parsed.database or "")
    if isinstance(exc, TimeoutError):
        return (
            f"did not answer within {CHECK_TIMEOUT_S:g} s: check that it is running and "
            "reachable, and CHATSTREAM_DATABASE_URL"
        )
    os_error = _os_cause(exc)
    if os_error is not None:
        return (
            f"is unreachable ({_describe_os_error(os_error)}): start it, or correct "
            "CHATSTREAM_DATABASE_URL"
        )
    return f"failed ({_first_line(exc, redact)}): check CHATSTREAM_DATABASE_URL"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)  # SQLAlchemy's DBAPIError wraps the driver's
        current = (
            orig
            if isinstance(orig, BaseException) and id(orig) not in seen
            else current.__cause__ or current.__context__
        )


def _os_cause(exc: BaseException) -> OSError | None:
    for cause in _chain(exc):
        if isinstance(cause, OSError) and not isinstance(cause, TimeoutError):
            return cause
    return None


def _describe_os_error(error: OSError) -> str:
    if isinstance(error, socket.gaierror):
        return "its host name does not resolve"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    text = error.strerror or str(error) or type(error).__name__
    return text[:1].lower() + text[1:]


def _first_line(exc: BaseException, redact: Redactor) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = redact(text)[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class StartupReport:
    """Outermost ASGI wrapper: a start-up that fails for a known reason is logged as one line.

    The lifespan logs the `StartupError` itself; Starlette then reports the
    failure to the server with a traceback as its message, which this replaces
    by nothing (so uvicorn logs only that start-up failed).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def holding_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                held.append(message)  # sent below, once the exception says why
                return
            await send(message)

        try:
            await self.app(scope, receive, holding_send)
        except BaseException as exc:
            explained = _already_explained(exc)
            for message in held:
                await send({**message, "message": ""} if explained else message)
            raise
        for message in held:
            await send(message)


def _already_explained(exc: BaseException) -> bool:
    """A start-up failure whose one line is logged (also inside a task group's exception group)."""
    if isinstance(exc, StartupError | ConfigurationError):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_already_explained(inner) for inner in exc.exceptions)
    return False


def explanation(exc: BaseException) -> str | None:
    """The one line a known start-up failure carries (the first, in an exception group)."""
    if isinstance(exc, StartupError | ConfigurationError):
        return str(exc)
    if isinstance(exc, BaseExceptionGroup) and _already_explained(exc):
        return explanation(exc.exceptions[0])
    return None
