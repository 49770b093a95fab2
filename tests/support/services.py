"""Access to the real PostgreSQL and Redis named by the environment.

Without `CHATSTREAM_TEST_POSTGRES_URL` / `CHATSTREAM_TEST_REDIS_URL` the tests
that need them are skipped, saying why. With `CHATSTREAM_TEST_REQUIRE_SERVICES=1`
(as `.ci/run` sets) a missing or unreachable service fails them instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url


def service_url(variable: str) -> str:
    url = os.environ.get(variable)
    if url:
        return url
    if os.environ.get("CHATSTREAM_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{variable} is not set, and this run requires the real service")
    pytest.skip(f"{variable} is not set: no real service to test against")


@contextlib.contextmanager
def fresh_postgres_database(base_url: str, prefix: str = "chatstream_t") -> Iterator[str]:
    """A new, empty database on the PostgreSQL of `base_url` (dropped afterwards); its URL."""
    url = make_url(base_url)
    plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"

    async def sql(statement: str) -> None:
        connection = await asyncpg.connect(plain, timeout=10)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(sql(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# Every Redis key a test run writes starts with this, so the run can find
# (and clean) exactly its own keys, whatever else shares the server.
SESSION_REDIS_PREFIX = f"chatstream-test-{uuid.uuid4().hex[:12]}"

# The prefixes handed out since the current test began: when it ends, the
# keys under them are checked (each must expire) and deleted (tests/conftest.py).
HANDED_OUT: list[str] = []


def redis_prefix() -> str:
    """A fresh key prefix for one test, under this test run's own prefix."""
    prefix = f"{SESSION_REDIS_PREFIX}-{uuid.uuid4().hex[:8]}"
    HANDED_OUT.append(prefix)
    return prefix


def sweep_redis_keys(url: str, pattern: str) -> dict[str, int]:
    """Delete the keys matching `pattern` on the Redis at `url`; each one's TTL before (s)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=pattern, count=1000))
        if not keys:
            return {}
        pipeline = client.pipeline(transaction=False)
        for key in keys:
            pipeline.ttl(key)
        ttls = pipeline.execute()
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()
    return {key.decode(): int(ttl) for key, ttl in zip(keys, ttls, strict=True) if ttl != -2}
