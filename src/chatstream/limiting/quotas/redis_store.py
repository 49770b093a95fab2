"""Token counts shared by every instance through Redis (`CHATSTREAM_QUOTA_*` with Redis).

One hash per owner and window, `<prefix>:quota:<window start>:<owner>`,
one field per model. A run's tokens are added with HINCRBY and the key's
expiry set in the same script, to the window's end plus a minute (room for
instances whose clocks disagree a little), so every key expires and none
outlives its window by more than that. Its own module so that redis-py is
imported only when Redis is configured.
"""

from __future__ import annotations

import logging
from types import TracebackType

import anyio
import anyio.abc
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from chatstream.limiting.quotas.window import Window

logger = logging.getLogger(__name__)

EXPIRY_GRACE_S = 60  # a window's key lives this long past the window's end
WRITE_TIMEOUT_S = 5.0

# KEYS[1]: the owner's hash for the window. ARGV: model, tokens, expiry (Unix seconds).
_ADD = """
local total = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIREAT', KEYS[1], ARGV[3])
return total
"""


class RedisQuotaStore:
    """Entered before use: its writes run on a task group of its own, awaited at exit."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._add = client.register_script(_ADD)
        self._tasks: anyio.abc.TaskGroup | None = None
        self._down = False  # in an outage (logged at its start and end)

    async def __aenter__(self) -> RedisQuotaStore:
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The writes still under way finish (each is bounded): runs ended at
        # shutdown count too.
        assert self._tasks is not None
        await self._tasks.__aexit__(exc_type, exc, tb)

    def _key(self, owner: str, window: Window) -> str:
        return f"{self._prefix}:{window.start}:{owner}"

    async def used(self, owner: str, window: Window) -> dict[str, int]:
        raw = await self._client.hgetall(self._key(owner, window))
        return {
            field.decode() if isinstance(field, bytes) else field: int(value)
            for field, value in raw.items()
        }

    def add(self, owner: str, model: str, tokens: int, window: Window) -> None:
        assert self._tasks is not None, "entered"
        self._tasks.start_soon(self._write, owner, model, tokens, window)

    async def _write(self, owner: str, model: str, tokens: int, window: Window) -> None:
        try:
            with anyio.fail_after(WRITE_TIMEOUT_S):
                await self._add(
                    keys=[self._key(owner, window)],
                    args=[model, tokens, window.end + EXPIRY_GRACE_S],
                )
        except (RedisError, OSError, TimeoutError) as exc:
            if not self._down:
                self._down = True
                logger.warning(
                    "could not count a run's tokens against its owner's quota (%s): "
                    "Redis is unreachable; runs that end meanwhile are not counted",
                    type(exc).__name__,
                )
            return
        if self._down:
            self._down = False
            logger.warning("quota counts reach Redis again")
