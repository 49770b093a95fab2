"""Limits on starting chats: the rate window and the concurrent-run cap.

Both are keyed by `Principal.limit_key` (the owner with auth on, the client's
address with auth off) and decided before anything is written or streamed,
over HTTP and WebSocket alike.

The window is `CHATSTREAM_RATE_LIMIT` on a moving window (exactly "at most N
in any such period"), kept by `limits` in memory or in Redis. (Not through
slowapi: its checks call the storage synchronously, which with Redis means a
network round trip that blocks the event loop, and it only decorates HTTP
routes, while WebSocket `chat` frames need the same limit. `limits.aio` has
the same strategies and storages, asynchronously.)

The cap is `CHATSTREAM_MAX_CONCURRENT_RUNS` live runs per key. A slot is taken
when a run is admitted and given back when it ends, however it ends. With
Redis storage the slots live in Redis too (a sorted set per key, each slot
expiring unless its process keeps renewing it), so every instance sees the
same count and a crashed instance's slots free themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

import anyio
import redis.asyncio as aioredis
from limits import RateLimitItem, parse
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from chatstream.config import Settings
from chatstream.errors import RateLimited, TooManyRuns

logger = logging.getLogger(__name__)

SLOT_TTL_S = 60.0  # a slot not renewed for this long is free (its process died)


@dataclass(frozen=True, slots=True)
class RateWindow:
    """Where a key stands in its window: what the X-RateLimit-* headers say."""

    limit: int
    remaining: int
    reset_after_s: int

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_after_s),
        }


class RunSlots(Protocol):
    async def acquire(self, key: str, run_id: uuid.UUID) -> bool: ...

    async def release(self, key: str, run_id: uuid.UUID) -> None: ...


class ChatLimits:
    """Entered in the lifespan: with Redis storage it owns the one client (and pool) both use."""

    def __init__(self, settings: Settings) -> None:
        self._item: RateLimitItem | None = (
            parse(settings.rate_limit) if settings.rate_limit else None
        )
        self._cap = settings.max_concurrent_runs
        self._prefix = settings.redis_key_prefix
        storage = settings.rate_limit_storage
        self._redis_url = None if storage.startswith("memory://") else storage
        self._window = MovingWindowRateLimiter(storage_from_string("async+memory://"))
        self._slots: RunSlots = MemoryRunSlots(self._cap)
        self._redis: aioredis.Redis | None = None
        self._tasks: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> ChatLimits:
        if self._redis_url is not None:
            self._redis = aioredis.Redis.from_url(self._redis_url)
            self._window = MovingWindowRateLimiter(
                storage_from_string(
                    f"async+{self._redis_url}",
                    implementation="redispy",
                    key_prefix=f"{self._prefix}:limits",
                    connection_pool=self._redis.connection_pool,  # type: ignore[arg-type]
                )
            )
            slots = RedisRunSlots(self._redis, f"{self._prefix}:runs", self._cap)
            self._slots = slots
            self._tasks = anyio.create_task_group()
            await self._tasks.__aenter__()
            self._tasks.start_soon(slots.keep_alive)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._tasks is not None:
            self._tasks.cancel_scope.cancel()
            await self._tasks.__aexit__(exc_type, exc, tb)
        if self._redis is not None:
            await self._redis.aclose()

    @property
    def uses_redis(self) -> bool:
        return self._redis is not None

    async def ping(self) -> None:
        """Raise if the shared storage cannot be reached."""
        if self._redis is not None:
            await self._redis.ping()

    async def take_slot(self, key: str, run_id: uuid.UUID) -> None:
        if not await self._slots.acquire(key, run_id):
            raise TooManyRuns(
                f"At most {self._cap} answers may be generated for you at once.", retry_after=1
            )

    async def give_back_slot(self, key: str, run_id: uuid.UUID) -> None:
        # However the run ended, even while the server shuts down.
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await self._slots.release(key, run_id)
            except Exception as exc:  # the slot expires on its own in Redis
                logger.warning("could not release a run slot (%s)", type(exc).__name__)

    async def check_window(self, key: str) -> None:
        """Raise RateLimited if one more chat would exceed the key's window (counts nothing)."""
        item = self._item
        if item is not None and not await self._window.test(item, key):
            window = await self.peek_window(key)
            assert window is not None
            raise self._limited(item, window)

    async def charge_window(self, key: str) -> RateWindow | None:
        """Count a chat that has started (after `check_window` let it through).

        Never refuses: concurrent chats of one key may all have passed the
        check (at most its run cap of them), and each is already real.
        """
        item = self._item
        if item is None:
            return None
        await self._window.hit(item, key)
        return await self.peek_window(key)

    def _limited(self, item: RateLimitItem, window: RateWindow) -> RateLimited:
        retry_after = max(window.reset_after_s, 1)
        return RateLimited(
            f"Too many chats started ({item}); try again in {retry_after} s.",
            retry_after=retry_after,
            headers=window.headers(),
        )

    async def peek_window(self, key: str) -> RateWindow | None:
        """Where the key stands, without counting anything."""
        item = self._item
        if item is None:
            return None
        stats = await self._window.get_window_stats(item, key)
        return RateWindow(
            limit=item.amount,
            remaining=max(stats.remaining, 0),
            reset_after_s=max(math.ceil(stats.reset_time - time.time()), 0),
        )


class MemoryRunSlots:
    """This process's slots."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._held: dict[str, set[uuid.UUID]] = {}

    async def acquire(self, key: str, run_id: uuid.UUID) -> bool:
        held = self._held.setdefault(key, set())
        if len(held) >= self._cap:
            return False
        held.add(run_id)
        return True

    async def release(self, key: str, run_id: uuid.UUID) -> None:
        held = self._held.get(key)
        if held is not None:
            held.discard(run_id)
            if not held:
                del self._held[key]


# KEYS[1]: the key's slot set. ARGV: now, expiry, cap, run id, key ttl.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class RedisRunSlots:
    """Slots shared by every instance using the same Redis."""

    def __init__(self, client: aioredis.Redis, prefix: str, cap: int) -> None:
        self._client = client
        self._prefix = prefix
        self._cap = cap
        self._acquire = client.register_script(_ACQUIRE)
        self._held: dict[tuple[str, uuid.UUID], None] = {}

    def _key(self, key: str) -> str:
        return f"{self._prefix}:{key}"

    async def acquire(self, key: str, run_id: uuid.UUID) -> bool:
        now = time.time()
        taken = await self._acquire(
            keys=[self._key(key)],
            args=[now, now + SLOT_TTL_S, self._cap, str(run_id), int(SLOT_TTL_S * 2)],
        )
        if taken:
            self._held[(key, run_id)] = None
        return bool(taken)

    async def release(self, key: str, run_id: uuid.UUID) -> None:
        self._held.pop((key, run_id), None)
        await self._client.zrem(self._key(key), str(run_id))

    async def keep_alive(self) -> None:
        """Renew this process's slots, so that only a dead process's slots expire."""
        while True:
            await asyncio.sleep(SLOT_TTL_S / 3)
            expiry = time.time() + SLOT_TTL_S
            for key, run_id in list(self._held):
                with contextlib.suppress(Exception):
                    await self._client.zadd(self._key(key), {str(run_id): expiry}, xx=True)
