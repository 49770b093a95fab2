"""Run slots shared through Redis by every instance (`ratelimit.ChatLimits` with Redis storage).

A sorted set per key, each slot expiring unless its process keeps renewing
it, so every instance sees the same count and a crashed instance's slots
free themselves. The renewal moves each slot's expiry and the set's own key
lifetime together, in one script, so a run that outlives the slot TTL
still counts. Its own module so that redis-py is imported only when Redis
is configured.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from chatstream.limiting.ratelimit import SLOT_TTL_S

logger = logging.getLogger(__name__)

# KEYS[1]: the key's slot set. ARGV: now, expiry, cap, run id, key lifetime (ms).
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

# KEYS[1]: the key's slot set. ARGV: expiry, key lifetime (ms), run ids held here.
# The slots' expiry and the set's lifetime move together: renewing only the
# scores would let the whole set expire under a run that outlives the TTL.
_RENEW = """
local renewed = 0
for i = 3, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[1], ARGV[i])
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return renewed
"""


class RedisRunSlots:
    """Slots shared by every instance using the same Redis."""

    def __init__(
        self, client: aioredis.Redis, prefix: str, cap: int, *, ttl_s: float = SLOT_TTL_S
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._cap = cap
        self._ttl_s = ttl_s
        self._key_lifetime_ms = math.ceil(ttl_s * 2000)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._held: dict[tuple[str, uuid.UUID], None] = {}

    def _key(self, key: str) -> str:
        return f"{self._prefix}:{key}"

    async def acquire(self, key: str, run_id: uuid.UUID) -> bool:
        now = time.time()
        taken = await self._acquire(
            keys=[self._key(key)],
            args=[now, now + self._ttl_s, self._cap, str(run_id), self._key_lifetime_ms],
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
            await asyncio.sleep(self._ttl_s / 3)
            by_key: dict[str, list[str]] = {}
            for key, run_id in list(self._held):
                by_key.setdefault(key, []).append(str(run_id))
            expiry = time.time() + self._ttl_s
            for key, run_ids in by_key.items():
                try:
                    await self._renew(
                        keys=[self._key(key)], args=[expiry, self._key_lifetime_ms, *run_ids]
                    )
                except (
                    RedisError,
                    OSError,
                ) as exc:  # retried at the next beat; the TTL leaves room for it
                    logger.debug("could not renew run slots (%s)", type(exc).__name__)
