"""What the URLs in the settings must look like, and what to write instead.

Each check returns the URL (trimmed where that is safe) or raises a
`ValueError` whose message says what to change; pydantic reports it under
the variable's name. A message never repeats a URL: it may hold a password.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

# The async drivers chatstream runs on, and what to write instead of a URL they cannot use.
DATABASE_SCHEMES = ("sqlite+aiosqlite://", "postgresql+asyncpg://")
_DATABASE_ADVICE = {
    "postgres": "use postgresql+asyncpg://user:password@host:5432/dbname "
    "(chatstream talks to PostgreSQL through asyncpg)",
    "postgresql": "use postgresql+asyncpg://user:password@host:5432/dbname "
    "(chatstream talks to PostgreSQL through asyncpg)",
    "sqlite": "use sqlite+aiosqlite:///path/to/chatstream.db (chatstream talks to SQLite "
    "through aiosqlite)",
}

REDIS_SCHEMES = ("redis://", "rediss://", "redis+unix://")


def check_database_url(value: str) -> str:
    if value.startswith(DATABASE_SCHEMES):
        return value
    # The scheme only: the rest of the URL may hold a password.
    scheme = value.split("://", 1)[0] if "://" in value else ""
    dialect = scheme.split("+", 1)[0].lower()
    advice = _DATABASE_ADVICE.get(dialect)
    if advice is None:
        advice = "must start with sqlite+aiosqlite:/// or postgresql+asyncpg://"
    shown = f"{scheme}:// is not supported; " if scheme else ""
    raise ValueError(shown + advice)


def check_base_url(value: str) -> str:
    """The model server's URL (`OPENAI_BASE_URL`)."""
    parts = urlsplit(value.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        # The scheme is what is usually missing: httpx would take host:port for one.
        raise ValueError(
            "must be a URL with a scheme and a host: include http:// or https:// "
            "(e.g. http://localhost:8000/v1)"
        )
    return value.strip()


def check_redis_url(value: str) -> str:
    if not value.startswith(REDIS_SCHEMES):
        raise ValueError("must be a redis:// URL (or rediss://, redis+unix://)")
    return _check_redis_database(value)


def check_store_url(value: str) -> str:
    """Where limits or cached answers live: this process's memory, or Redis."""
    if not value.startswith(("memory://", *REDIS_SCHEMES)):
        raise ValueError("must be memory:// or a redis:// URL")
    return value if value.startswith("memory://") else _check_redis_database(value)


def _check_redis_database(url: str) -> str:
    """A Redis URL whose database number is a number: redis-py would quietly use 0 instead."""
    parts = urlsplit(url)
    chosen = parse_qs(parts.query).get("db")
    if chosen is not None:
        if not all(value.isdigit() for value in chosen):
            raise ValueError(
                "its db=… must be a database number (db=0), not " + repr("db=" + chosen[0])
            )
        return url
    if parts.scheme != "redis+unix" and not re.fullmatch(r"/?(\d+/?)?", parts.path):
        raise ValueError(
            "the database after the port must be a number, as in redis://host:6379/0, "
            f"not {parts.path!r}"
        )
    return url
