"""The run cap in Redis holds for runs that last longer than a slot's TTL (real Redis)."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis

from chatstream.config import Settings
from chatstream.errors import TooManyRuns
from chatstream.limiting.ratelimit import ChatLimits
from tests.support.services import redis_prefix, service_url
from tests.support.wait import wait_until_async

pytestmark = [pytest.mark.redis, pytest.mark.anyio]

SLOT_TTL_S = 0.6  # the production TTL is a minute; the rule is the same


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_run_longer_than_the_slot_ttl_still_holds_its_slot() -> None:
    url = service_url("CHATSTREAM_TEST_REDIS_URL")
    prefix = redis_prefix()
    settings = Settings(
        rate_limit="",
        rate_limit_storage=url,
        redis_key_prefix=prefix,
        max_concurrent_runs=1,
    )
    redis = aioredis.Redis.from_url(url)
    key = f"{prefix}:runs:owner:alice"
    long_run, next_run = uuid.uuid4(), uuid.uuid4()
    try:
        async with ChatLimits(settings, slot_ttl_s=SLOT_TTL_S) as limits:
            await limits.take_slot("owner:alice", long_run)
            first_expiry_ms = int(await redis.pexpiretime(key))
            assert first_expiry_ms > 0

            async def well_past_every_first_deadline() -> bool:
                # Redis' own clock past the key's first lifetime and the slot's first TTL, twice.
                seconds, micros = await redis.time()
                now_ms = seconds * 1000 + micros // 1000
                return bool(now_ms > first_expiry_ms + 2 * SLOT_TTL_S * 1000)

            await wait_until_async(well_past_every_first_deadline, timeout=20)
            # The run is still live: its slot (and the set holding it) must still count.
            assert await redis.exists(key) == 1
            assert int(await redis.pexpiretime(key)) > first_expiry_ms
            with pytest.raises(TooManyRuns):
                await limits.take_slot("owner:alice", next_run)
            # Given back, it is free at once.
            await limits.give_back_slot("owner:alice", long_run)
            await limits.take_slot("owner:alice", next_run)
            await limits.give_back_slot("owner:alice", next_run)
    finally:
        await redis.delete(key)
        await redis.aclose()


async def test_a_dead_processs_slot_frees_itself() -> None:
    """Without renewal (its process gone), a slot stops counting after its TTL."""
    url = service_url("CHATSTREAM_TEST_REDIS_URL")
    prefix = redis_prefix()
    settings = Settings(
        rate_limit="", rate_limit_storage=url, redis_key_prefix=prefix, max_concurrent_runs=1
    )
    redis = aioredis.Redis.from_url(url)
    key = f"{prefix}:runs:owner:bob"
    try:
        async with ChatLimits(settings, slot_ttl_s=SLOT_TTL_S) as dead:
            await dead.take_slot("owner:bob", uuid.uuid4())
        # `dead` has exited without giving its slot back, like a killed process.
        async with ChatLimits(settings, slot_ttl_s=SLOT_TTL_S) as alive:

            async def slot_expired() -> bool:
                return await redis.exists(key) == 0

            await wait_until_async(slot_expired, timeout=20)
            await alive.take_slot("owner:bob", uuid.uuid4())
    finally:
        await redis.delete(key)
        await redis.aclose()
