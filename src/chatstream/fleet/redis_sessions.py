"""Sessions' live state across instances: the turn claim and the session events, in Redis.

    {prefix}:session:{id}:turn       string "<run id> <owner>": the run that holds the
                                     session's turn; expires after CLAIM_S (by then the
                                     run is in `:runs`, the run ids of the session's live runs)
    {prefix}:session-events          pub/sub channel: {"i": instance, "s": session id,
                                     "e": event}; every instance delivers what others publish

A session is busy while one of its runs is live in Redis (`status` live or
ending) or while the run holding its claim has not reached Redis yet
(launching). The claim script checks both and takes the turn in one step,
so two messages sent at once to two instances never both start a run.

Each instance also keeps its own `LocalSessionGate`, checked first: exact
for its own runs even before they reach Redis, and the answer while Redis
is away (a chat is then checked against this instance's runs only).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import anyio
import orjson
import redis.asyncio as aioredis
from anyio.abc import TaskGroup
from redis.exceptions import RedisError

from chatstream.config import Settings
from chatstream.fleet.redis_keys import Keys
from chatstream.runs.handle import RunHost
from chatstream.runs.session_events import SessionEvents
from chatstream.runs.session_gate import POLL_S, LiveSessions, LocalSessionGate

logger = logging.getLogger(__name__)

TIMEOUT_S = 5.0
RETRY_S = 0.5
OUTBOX_LIMIT = 1000  # events waiting for Redis; the oldest are dropped beyond
CLAIM_MARGIN_S = 5.0  # a claim outlives a lease by this: the run is in Redis well before
FLUSH_WAIT_S = 2.0  # how long a run ended here may take to be ended in Redis too

# KEYS: turn, session_runs; ARGV: run id, owner, claim ms, run meta key prefix.
# {1, ''}: the turn is taken (or the session is another owner's: nothing claimed);
# {0, run id}: that run is live in the session, or launching.
CLAIM = """
local function live(status) return status == 'live' or status == 'ending' end
for _, member in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local fields = redis.call('HMGET', ARGV[4] .. member, 'owner', 'status')
  if fields[1] == ARGV[2] and live(fields[2]) then return {0, member} end
end
local held = redis.call('GET', KEYS[1])
if held then
  local run, owner = string.match(held, '^(%S+) (.*)$')
  if owner ~= ARGV[2] then return {1, ''} end
  local status = redis.call('HGET', ARGV[4] .. run, 'status')
  if not status or live(status) then return {0, run} end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'PX', ARGV[3])
return {1, ''}
"""

# KEYS: turn; ARGV: run id. Let the turn go, if this run still holds it.
RELEASE = """
local held = redis.call('GET', KEYS[1])
if held and string.match(held, '^(%S+) ') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


class RedisSessions:
    """The Redis side of `LiveSessions`: a gate (`SessionGate`) and the events' relay."""

    def __init__(self, settings: Settings, instance: str, events: SessionEvents) -> None:
        assert settings.redis_url is not None
        self._client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=TIMEOUT_S)
        self._keys = Keys(f"{settings.redis_key_prefix}:shared")
        self._channel = f"{self._keys.prefix}:session-events"
        self._claim_ms = int((settings.run_lease_s + CLAIM_MARGIN_S) * 1000)
        self._instance = instance
        self._events = events
        self._outbox: deque[bytes] = deque(maxlen=OUTBOX_LIMIT)
        self._wake = anyio.Event()
        self._drained = anyio.Event()
        self._drained.set()
        self._tasks: TaskGroup | None = None
        self._claim = self._client.register_script(CLAIM)
        self._release = self._client.register_script(RELEASE)
        self.local: LocalSessionGate | None = None  # set with the registry (`sessions`)
        self._registry: RunHost | None = None

    async def __aenter__(self) -> RedisSessions:
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        self._tasks.start_soon(self._publish_forever)
        self._tasks.start_soon(self._subscribe_forever)
        self._events.relay = self._relay
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._events.relay = None
        tasks, self._tasks = self._tasks, None
        assert tasks is not None
        with anyio.move_on_after(1.0):  # the last runs' ends, if Redis takes them at once
            await self._drained.wait()
        tasks.cancel_scope.cancel()
        await tasks.__aexit__(exc_type, exc, tb)
        await self._client.aclose()

    def sessions(self, registry: RunHost, *, wait_s: float) -> LiveSessions:
        self.local = LocalSessionGate(registry)
        self._registry = registry
        self._events.on_run_end = self._ended
        return LiveSessions(self._events, self, registry, wait_s=wait_s)

    # --- events ----------------------------------------------------------------------

    def _relay(self, session_id: uuid.UUID, event: dict[str, Any]) -> None:
        self._outbox.append(orjson.dumps({"i": self._instance, "s": str(session_id), "e": event}))
        if self._drained.is_set():
            self._drained = anyio.Event()
        self._wake.set()

    async def _publish_forever(self) -> None:
        failing = False
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._outbox:
                message = self._outbox[0]
                try:
                    await self._client.publish(self._channel, message)
                    failing = False
                except (RedisError, OSError):
                    # A hint, not a record: a watcher that reconnects reads the state anew.
                    if not failing:
                        logger.warning(
                            "session events cannot reach Redis; dropped until it is back"
                        )
                    failing = True
                    await anyio.sleep(RETRY_S)
                if self._outbox and self._outbox[0] is message:
                    self._outbox.popleft()
            self._drained.set()

    async def _subscribe_forever(self) -> None:
        failing = False
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                if failing:
                    logger.info("session events from other instances: Redis is back")
                failing = False
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._receive(message["data"])
            except (RedisError, OSError):
                if not failing:
                    logger.warning("session events from other instances: Redis unreachable")
                failing = True
                await anyio.sleep(RETRY_S)
            finally:
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(1.0),
                    contextlib.suppress(RedisError, OSError),
                ):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _receive(self, data: bytes) -> None:
        try:
            message = orjson.loads(data)
            if message["i"] == self._instance:
                return  # delivered here when it was published
            self._events.deliver(uuid.UUID(message["s"]), message["e"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            logger.warning("ignored a malformed session event from Redis")

    # --- gate --------------------------------------------------------------------------

    def _turn(self, session_id: uuid.UUID) -> str:
        return f"{self._keys.prefix}:session:{session_id}:turn"

    async def claim(self, owner: str, session_id: uuid.UUID, run_id: uuid.UUID) -> uuid.UUID | None:
        assert self.local is not None
        here = await self.local.claim(owner, session_id, run_id)
        if here is not None:
            return here
        try:
            answer: Any = await self._claim_in_redis(owner, session_id, run_id)
        except (RedisError, OSError):
            logger.warning(
                "session %s checked against this instance's runs only: Redis away", session_id
            )
            return None
        except BaseException:
            await self.local.settle(session_id, run_id, launched=False)  # cancelled: no turn
            raise
        if int(answer[0]) == 1:
            return None
        await self.local.settle(session_id, run_id, launched=False)
        return uuid.UUID(answer[1].decode())

    async def _claim_in_redis(self, owner: str, session_id: uuid.UUID, run_id: uuid.UUID) -> Any:
        """The script's answer; a run of this instance's that has ended (its end a flush
        away from Redis) is waited out rather than reported."""
        keys = [self._turn(session_id), self._keys.session_runs(session_id)]
        args: list[str | int] = [str(run_id), owner, self._claim_ms, f"{self._keys.prefix}:run:"]
        with anyio.move_on_after(FLUSH_WAIT_S):
            while True:
                answer: Any = await self._claim(keys=keys, args=args)
                if int(answer[0]) == 1:
                    return answer
                assert self._registry is not None
                here = self._registry.local(uuid.UUID(answer[1].decode()), owner)
                if here is None or here.live:
                    return answer
                await anyio.sleep(POLL_S)
        return answer

    async def settle(self, session_id: uuid.UUID, run_id: uuid.UUID, launched: bool) -> None:
        assert self.local is not None
        await self.local.settle(session_id, run_id, launched)
        if not launched:
            await self._let_go(session_id, run_id)

    async def _let_go(self, session_id: uuid.UUID, run_id: uuid.UUID) -> None:
        with contextlib.suppress(RedisError, OSError):
            # The claim expires by itself if this is lost.
            await self._release(keys=[self._turn(session_id)], args=[str(run_id)])

    def _ended(self, session_id: uuid.UUID, run_id: uuid.UUID) -> None:
        assert self.local is not None
        self.local.ended(session_id, run_id)

    async def active(
        self, owner: str, session_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, uuid.UUID]:
        assert self.local is not None
        found = await self.local.active(owner, session_ids)
        wanted = [session_id for session_id in session_ids if session_id not in found]
        if not wanted:
            return found
        try:
            pipeline = self._client.pipeline(transaction=False)
            for session_id in wanted:
                pipeline.smembers(self._keys.session_runs(session_id))
            members: Any = await pipeline.execute()
            candidates = [
                (session_id, uuid.UUID(member.decode()))
                for session_id, runs in zip(wanted, members, strict=True)
                for member in runs
            ]
            if not candidates:
                return found
            pipeline = self._client.pipeline(transaction=False)
            for _, run_id in candidates:
                pipeline.hmget(self._keys.meta(run_id), "owner", "status")
            metas: Any = await pipeline.execute()
        except (RedisError, OSError):
            return found  # this instance's runs only, while Redis is away
        for (session_id, run_id), (run_owner, status) in zip(candidates, metas, strict=True):
            if (
                run_owner is not None
                and run_owner.decode() == owner
                and status in (b"live", b"ending")
            ):
                found.setdefault(session_id, run_id)
        return found
