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
same count and a crashed instance's slots free themselves. The renewal
moves each slot's expiry and the set's own key lifetime together, in one
script, so a run that outlives the slot TTL still counts.

With Redis storage, Redis must answer at start-up. If it becomes unreachable
later, chats are refused with 503 `rate_limiter_unavailable` (fail closed,
the default: nobody gets past the limits meanwhile), or, with
`CHATSTREAM_RATE_LIMIT_FAIL_OPEN=true`, let through unlimited until it is
back (a limiter outage then never stops the service). Either way the outage
is logged once when it starts and once when it ends.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

import anyio
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string

from chatstream.config import Settings
from chatstream.errors import RateLimited, RateLimiterUnavailable, TooManyRuns
from chatstream.startup import redis_failure

if TYPE_CHECKING:
    import redis.asyncio as aioredis

logger = logging.getLogger(__name__)

SLOT_TTL_S = 60.0  # a slot not renewed for this long is free (its process died)
STARTUP_PING_TIMEOUT_S = 10.0

# What the storage raises when it cannot be reached (with Redis, RedisError too).
_OUTAGES: tuple[type[Exception], ...] = (StorageError, OSError)


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

    def __init__(self, settings: Settings, *, slot_ttl_s: float = SLOT_TTL_S) -> None:
        self._item: RateLimitItem | None = (
            parse(settings.rate_limit) if settings.rate_limit else None
        )
        self._cap = settings.max_concurrent_runs
        self._prefix = settings.redis_key_prefix
        self._slot_ttl_s = slot_ttl_s
        self._fail_open = settings.rate_limit_fail_open
        self._down = False  # in an outage of the shared storage (logged at its start and end)
        self._unslotted: set[uuid.UUID] = set()  # runs let through in an outage (fail open)
        storage = settings.limits_storage
        # Which setting named that Redis, for a start-up error that says what to fix.
        self._storage_variable = (
            "CHATSTREAM_REDIS_URL"
            if settings.rate_limit_storage.startswith("memory://")
            else "CHATSTREAM_RATE_LIMIT_STORAGE"
        )
        self._redis_url = None if storage.startswith("memory://") else storage
        self._window = MovingWindowRateLimiter(InlineExpiryMemoryStorage())
        self._slots: RunSlots = MemoryRunSlots(self._cap)
        self._redis: aioredis.Redis | None = None
        self._outages = _OUTAGES
        self._tasks: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> ChatLimits:
        if self._redis_url is not None:
            # Imported only with Redis storage: redis-py (and the cryptography it
            # loads) would be ~15 MB resident in every process for nothing.
            import redis.asyncio as aioredis
            from redis.exceptions import RedisError

            from chatstream.fleet.redis_slots import RedisRunSlots

            self._outages = (RedisError, *_OUTAGES)
            self._redis = aioredis.Redis.from_url(self._redis_url)
            unreachable: tuple[type[Exception], ...] = (*self._outages, TimeoutError)
            try:
                with anyio.fail_after(STARTUP_PING_TIMEOUT_S):
                    await self._redis.ping()
            except unreachable as exc:
                await self._redis.aclose()
                raise redis_failure(self._redis_url, exc, self._storage_variable) from None
            self._window = MovingWindowRateLimiter(
                storage_from_string(
                    f"async+{self._redis_url}",
                    implementation="redispy",
                    key_prefix=f"{self._prefix}:limits",
                    connection_pool=self._redis.connection_pool,  # type: ignore[arg-type]
                )
            )
            slots = RedisRunSlots(
                self._redis, f"{self._prefix}:runs", self._cap, ttl_s=self._slot_ttl_s
            )
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

    @contextlib.asynccontextmanager
    async def _storage(self) -> AsyncIterator[list[bool]]:
        """Around a use of the shared storage: an outage becomes 503, or is let through.

        Yields a one-item list the caller reads after the block: `[True]` when
        the storage failed and the request is let through (fail open).
        """
        failed = [False]
        try:
            yield failed
        except self._outages as exc:
            self._outage(exc)
            if not self._fail_open:
                raise RateLimiterUnavailable(retry_after=1) from None
            failed[0] = True
            return
        self._outage(None)

    def _outage(self, exc: BaseException | None) -> None:
        """Log an outage of the shared storage once when it starts and once when it ends."""
        if exc is not None and not self._down:
            self._down = True
            logger.warning(
                "rate limiter storage unreachable (%s): %s until it is back "
                "(CHATSTREAM_RATE_LIMIT_FAIL_OPEN=%s)",
                type(exc).__name__,
                "letting chats through unlimited" if self._fail_open else "refusing chats",
                "true" if self._fail_open else "false",
            )
        elif exc is None and self._down:
            self._down = False
            logger.warning("rate limiter storage reachable again")

    async def take_slot(self, key: str, run_id: uuid.UUID) -> None:
        async with self._storage() as failed:
            taken = await self._slots.acquire(key, run_id)
        if failed[0]:
            self._unslotted.add(run_id)  # let through without a slot: none to give back
            return
        if not taken:
            raise TooManyRuns(
                f"At most {self._cap} answers may be generated for you at once.", retry_after=1
            )

    async def give_back_slot(self, key: str, run_id: uuid.UUID) -> None:
        if run_id in self._unslotted:
            self._unslotted.discard(run_id)
            return
        # However the run ended, even while the server shuts down.
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await self._slots.release(key, run_id)
            except self._outages as exc:  # the slot expires on its own in Redis
                self._outage(exc)
            except Exception as exc:
                logger.warning("could not release a run slot (%s)", type(exc).__name__)

    async def check_window(self, key: str) -> None:
        """Raise RateLimited if one more chat would exceed the key's window (counts nothing)."""
        item = self._item
        if item is None:
            return
        async with self._storage() as failed:
            allowed = await self._window.test(item, key)
        if failed[0] or allowed:
            return
        window = await self.peek_window(key)
        if window is not None:
            raise self._limited(item, window)

    async def charge_window(self, key: str) -> RateWindow | None:
        """Count a chat that has started (after `check_window` let it through).

        Never refuses: concurrent chats of one key may all have passed the
        check (at most its run cap of them), and each is already real. (Nor
        does an outage that began since: the chat is already under way.)
        """
        item = self._item
        if item is None:
            return None
        try:
            await self._window.hit(item, key)
        except self._outages as exc:
            self._outage(exc)
            return None
        return await self.peek_window(key)

    def _limited(self, item: RateLimitItem, window: RateWindow) -> RateLimited:
        retry_after = max(window.reset_after_s, 1)
        return RateLimited(
            f"Too many chats started ({item}); try again in {retry_after} s.",
            retry_after=retry_after,
            headers=window.headers(),
        )

    async def peek_window(self, key: str) -> RateWindow | None:
        """Where the key stands, without counting anything (None while the storage is down)."""
        item = self._item
        if item is None:
            return None
        try:
            stats = await self._window.get_window_stats(item, key)
        except self._outages as exc:
            self._outage(exc)
            return None
        self._outage(None)
        return RateWindow(
            limit=item.amount,
            remaining=max(stats.remaining, 0),
            reset_after_s=max(math.ceil(stats.reset_time - time.time()), 0),
        )


class InlineExpiryMemoryStorage(MemoryStorage):
    """`limits`' async memory storage, expiring old entries on the event loop.

    Upstream, each expiry pass (scheduled by nearly every hit) sends a
    bisect of each key's entries to a worker thread: a thread-pool hop, and
    at first a thread start, on the path of every chat, for microseconds of
    work. The same pass, done inline (the method name is the base class's
    private one, which is what it calls).
    """

    async def _MemoryStorage__expire_events(self) -> None:
        now = time.time()
        for key in list(self.events.keys()):
            entries = self.events.get(key, [])
            cutoff = bisect.bisect_left(entries, -now, key=lambda entry: -entry.expiry)
            if entries:
                self.events[key] = entries[:cutoff]
            if not self.events.get(key):
                self.events.pop(key, None)
                self.locks.pop(key, None)
        for key in list(self.expirations.keys()):
            if self.expirations[key] <= time.time():
                self.storage.pop(key, None)
                self.expirations.pop(key, None)
                self.locks.pop(key, None)


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
