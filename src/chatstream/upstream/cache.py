"""The answer cache: an exact repeat is answered with what the model said last time.

    CachingUpstream.stream(request)
      ├─ not cacheable (a temperature above 0, a tool round's continuation, or a
      │  regeneration: another answer is asked for)
      │     → the model, untouched
      ├─ hit  → the stored chunk batches, replayed; `request.from_cache = True`
      └─ miss → the model, with a copy of every batch kept aside; stored once the
                stream has ended with a `finish_reason` and without tool calls

The key is a hash of everything that decides the answer: the model, the
messages sent (system prompt and context included), the temperature (0 or
unset, told apart), `max_tokens`, the tools offered and a pass-through
client's own fields (`response_format`, `stop`, `seed`, ...). The run above
does not know the difference between a hit and the model, except for the flag,
which ends up as `done.metrics.cached: true`; a replayed answer is persisted
like any other.

Entries live for `CHATSTREAM_CACHE_TTL_S`, in this process's memory or in
Redis (`CHATSTREAM_CACHE_STORAGE`), within `CHATSTREAM_CACHE_MAX_BYTES`:
past the budget the least recently used (memory) or the soonest to expire
(Redis) entries go first. In Redis the books kept for that budget expire
with the last entry they count, so no key stays forever. The cache is a
convenience: a store that fails is logged and treated as a miss, never as a
failed run.

It is shared by every owner (the key is the conversation, not who had it):
turn it on where identical conversations may share an answer.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.lowlevel
import orjson

from chatstream.config import Settings
from chatstream.jsonbytes import dumps_to_keep
from chatstream.upstream.stream import ChatUpstream, UpstreamRequest

if TYPE_CHECKING:
    import redis.asyncio as aioredis

logger = logging.getLogger(__name__)

# A store that does not answer within this is skipped: the model answers instead.
STORE_TIMEOUT_S = 1.0


class AnswerStore(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def aclose(self) -> None: ...


def cache_key(request: UpstreamRequest) -> str | None:
    """The request's key, or None when its answer must not come from a cache."""
    if request.temperature not in (None, 0) or request.fresh:
        return None
    if not request.messages or request.messages[-1].get("role") != "user":
        return None  # a tool round's continuation: the answer depends on tool results
    identity = [
        request.model,
        request.messages,
        request.temperature,
        request.max_tokens,
        request.tools,
        request.tool_choice,
        request.extra,
    ]
    return hashlib.sha256(orjson.dumps(identity, option=orjson.OPT_SORT_KEYS)).hexdigest()


def complete_answer(batches: list[list[Any]]) -> bool:
    """Whether a stream holds a whole answer without tool calls (so it may be replayed)."""
    finish_reason = None
    for batch in batches:
        for chunk in batch:
            if not isinstance(chunk, dict) or "error" in chunk:
                return False
            for choice in chunk.get("choices") or ():
                if (choice.get("delta") or {}).get("tool_calls"):
                    return False
                finish_reason = choice.get("finish_reason") or finish_reason
    return finish_reason is not None and finish_reason != "tool_calls"


class CachingUpstream(ChatUpstream):
    """A `ChatUpstream` that answers exact repeats from an `AnswerStore`.

    A subclass so that it fits wherever the model's upstream does; every
    request it does not answer itself goes to `inner`.
    """

    def __init__(self, inner: ChatUpstream, store: AnswerStore, ttl_s: float) -> None:
        self._inner = inner
        self._store = store
        self._ttl_s = ttl_s

    @asynccontextmanager
    async def stream(self, request: UpstreamRequest) -> AsyncIterator[AsyncIterator[list[Any]]]:
        key = cache_key(request)
        if key is None:
            async with self._inner.stream(request) as batches:
                yield batches
            return
        stored = await self._get(key)
        if stored is not None:
            request.from_cache = True
            async with aclosing(_replay(stored)) as replay:
                yield replay
            return
        kept: list[list[Any]] = []
        ended = False

        async def copying(
            batches: AsyncIterator[list[Any]],
        ) -> AsyncGenerator[list[Any], None]:
            nonlocal ended
            async for batch in batches:
                kept.append(batch)
                yield batch
            ended = True

        async with self._inner.stream(request) as batches, aclosing(copying(batches)) as copy:
            yield copy
        if ended and complete_answer(kept):
            await self._put(key, dumps_to_keep(kept))

    async def _get(self, key: str) -> list[list[Any]] | None:
        try:
            with anyio.fail_after(STORE_TIMEOUT_S):
                value = await self._store.get(key)
            return orjson.loads(value) if value is not None else None
        except Exception as exc:
            logger.warning("answer cache: lookup failed (%s); asking the model", type(exc).__name__)
            return None

    async def _put(self, key: str, value: bytes) -> None:
        try:
            with anyio.fail_after(STORE_TIMEOUT_S):
                await self._store.put(key, value, self._ttl_s)
        except Exception as exc:
            logger.warning("answer cache: storing failed (%s)", type(exc).__name__)


async def _replay(batches: list[list[Any]]) -> AsyncGenerator[list[Any], None]:
    for batch in batches:
        yield batch
        # As the model's stream would: readers see the answer arrive in pieces.
        await anyio.lowlevel.checkpoint()


class MemoryAnswerStore:
    """This process's entries, least recently used evicted first past the byte budget."""

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.size = 0  # bytes held

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if self._clock() >= expires_at:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        if len(value) > self._max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self._clock() + ttl_s, value)
        self.size += len(value)
        now = self._clock()
        for stale in [k for k, (expires_at, _) in self._entries.items() if expires_at <= now]:
            self._drop(stale)
        while self.size > self._max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self.size -= len(value)

    def __len__(self) -> int:
        return len(self._entries)

    async def aclose(self) -> None:
        self._entries.clear()
        self.size = 0


# KEYS: the entry, the index (entry -> expiry, ms), the sizes (entry -> bytes), the total.
# ARGV: the value, its ttl (ms), now (ms), the byte budget.
# The books (index, sizes, total) expire too, as late as the latest entry they
# list: each write moves their expiry out to its entry's (never nearer), so
# they outlive every entry they count, and go once all of those have.
_PUT = """
local now = tonumber(ARGV[3])
local ttl = tonumber(ARGV[2])
local budget = tonumber(ARGV[4])
local function keep_books()
  for i = 2, 4 do
    -- PTTL: -1 when a key has no expiry, -2 when it is absent (PEXPIRE then does nothing).
    if redis.call('PTTL', KEYS[i]) < ttl then
      redis.call('PEXPIRE', KEYS[i], ttl)
    end
  end
end
local function forget(entry)
  local size = tonumber(redis.call('HGET', KEYS[3], entry) or '0')
  redis.call('DECRBY', KEYS[4], size)
  redis.call('HDEL', KEYS[3], entry)
  redis.call('ZREM', KEYS[2], entry)
  redis.call('DEL', entry)
end
for _, entry in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  forget(entry)
end
local size = string.len(ARGV[1])
if size > budget then
  keep_books()  -- a DECRBY above may have created the total
  return 0
end
forget(KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], now + ttl, KEYS[1])
redis.call('HSET', KEYS[3], KEYS[1], size)
local total = redis.call('INCRBY', KEYS[4], size)
while total > budget do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  if not oldest then
    redis.call('SET', KEYS[4], 0)
    break
  end
  forget(oldest)
  total = tonumber(redis.call('GET', KEYS[4]) or '0')
end
keep_books()  -- last: the SET above clears the total's expiry
return 1
"""


class RedisAnswerStore:
    """Entries shared by every instance using the same Redis (and key prefix).

    Redis expires entries by itself; the byte budget is kept by one script
    per write, which drops expired entries from the books and then the
    entries closest to expiry until the total fits.
    """

    def __init__(self, url: str, prefix: str, max_bytes: int) -> None:
        import redis.asyncio as aioredis  # only with a Redis store (~15 MB resident)

        self._client: aioredis.Redis = aioredis.Redis.from_url(url)
        self._prefix = f"{prefix}:cache"
        self._max_bytes = max_bytes
        self._put = self._client.register_script(_PUT)

    async def get(self, key: str) -> bytes | None:
        value = await self._client.get(f"{self._prefix}:a:{key}")
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        prefix = self._prefix
        await self._put(
            keys=[f"{prefix}:a:{key}", f"{prefix}:index", f"{prefix}:sizes", f"{prefix}:bytes"],
            args=[value, max(1, round(ttl_s * 1000)), round(time.time() * 1000), self._max_bytes],
        )

    async def size(self) -> int:
        """The bytes held, by the books."""
        return int(await self._client.get(f"{self._prefix}:bytes") or 0)

    async def aclose(self) -> None:
        await self._client.aclose()


class AnswerCache:
    """The configured store, opened and closed with the app: `async with AnswerCache(s) as c`."""

    def __init__(self, settings: Settings) -> None:
        self.store: AnswerStore
        if settings.cache_store.startswith("memory://"):
            self.store = MemoryAnswerStore(settings.cache_max_bytes)
        else:
            self.store = RedisAnswerStore(
                settings.cache_store, settings.redis_key_prefix, settings.cache_max_bytes
            )
        self._ttl_s = settings.cache_ttl_s or 0.0

    def wrap(self, upstream: ChatUpstream) -> ChatUpstream:
        return CachingUpstream(upstream, self.store, self._ttl_s)

    async def __aenter__(self) -> AnswerCache:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.store.aclose()
