"""This instance's runs, mirrored to Redis so that every instance can follow them.

    run ── append ──▶ MirroredEventLog (memory: this instance's followers read here)
                            │ changed
                            ▼
                      RunMirror flusher ── one pipeline per tick ──▶ Redis stream per run
    lease keeper ── every lease/3: ZADD leases ──▶ a run whose lease lapses is taken over
    cancel listener ◀── pub/sub (and the durable flag, checked with each lease) ── any instance

The run itself never waits for Redis: appends go to memory and are written
in batches (a pipeline per tick, not a round trip per token). When Redis
goes away, the run goes on and persists to the database as always; what
was not mirrored yet stays pending and is written, from the first event the
stream lacks, once Redis is back (after a restart that lost everything, the
run is recreated whole).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from types import TracebackType

import anyio
import anyio.abc
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from chatstream.runs.events import Event, EventPayload, MessageStatus
from chatstream.runs.log import MemoryEventLog
from chatstream.runs.redis_keys import APPEND, Keys

logger = logging.getLogger(__name__)

FLUSH_TICK_S = 0.005  # gather a tick's appends into one pipeline
RETRY_S = 0.5


class MirroredEventLog(MemoryEventLog):
    """A run's log in memory, telling the mirror about each append."""

    __slots__ = ("_mirror", "mirrored", "owner", "run_id", "session_id")

    def __init__(
        self, mirror: RunMirror, run_id: uuid.UUID, owner: str, session_id: uuid.UUID
    ) -> None:
        super().__init__()
        self._mirror = mirror
        self.run_id = run_id
        self.owner = owner
        self.session_id = session_id
        self.mirrored = 0  # the last seq Redis has

    def append(self, payload: EventPayload) -> Event:
        event = super().append(payload)
        self._mirror.changed(self)
        return event


CancelLocal = Callable[[uuid.UUID, MessageStatus], bool]


class RunMirror:
    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        instance: str,
        *,
        lease_s: float,
        retention_s: float,
        max_run_s: float,
        cancel_local: CancelLocal,
    ) -> None:
        self._client = client
        self._keys = keys
        self.instance = instance
        self._lease_s = lease_s
        self._retention_s = max(int(retention_s), 1)
        # Longer than any run may live: a key is never left without an expiry.
        self._live_ttl_s = int(max_run_s + retention_s + 4 * lease_s) + 1
        self._cancel_local = cancel_local
        self._append = client.register_script(APPEND)
        self._pending: dict[uuid.UUID, MirroredEventLog] = {}
        self._live: dict[uuid.UUID, MirroredEventLog] = {}
        self._wake = anyio.Event()
        self._tasks: anyio.abc.TaskGroup | None = None
        self.reachable = True

    def log_for(self, run_id: uuid.UUID, owner: str, session_id: uuid.UUID) -> MirroredEventLog:
        log = MirroredEventLog(self, run_id, owner, session_id)
        self._live[run_id] = log
        return log

    def changed(self, log: MirroredEventLog) -> None:
        self._pending[log.run_id] = log
        if not self._wake.is_set():
            self._wake.set()

    # --- lifetime -------------------------------------------------------------------

    async def __aenter__(self) -> RunMirror:
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        self._tasks.start_soon(self._flush_loop)
        self._tasks.start_soon(self._keep_leases)
        self._tasks.start_soon(self._hear_cancels)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The runs have ended (the registry closed first): their last events go out.
        with anyio.move_on_after(5, shield=True):
            while self._pending and await self.flush():
                pass
        assert self._tasks is not None
        self._tasks.cancel_scope.cancel()
        await self._tasks.__aexit__(exc_type, exc, tb)

    # --- events ---------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            await anyio.sleep(FLUSH_TICK_S)
            if not await self.flush():
                await anyio.sleep(RETRY_S)
                self._wake.set()

    async def flush(self) -> bool:
        """Write every pending run's new events in one pipeline; False if Redis failed."""
        batch, self._pending = self._pending, {}
        if not batch:
            return True
        pipeline = self._client.pipeline(transaction=False)
        plan: list[tuple[MirroredEventLog, int, str]] = []
        lease_expiry = self._lease_expiry_ms()
        for log in batch.values():
            events = log.after(log.mirrored)
            if not events:
                continue
            last = events[-1]
            final = str(last.data["status"]) if last.is_terminal else ""  # type: ignore[typeddict-item]
            args: list[str | int | bytes] = [
                self.instance,
                log.owner,
                str(log.session_id),
                self._live_ttl_s,
                self._retention_s,
                lease_expiry,
                final,
                str(log.run_id),
            ]
            for event in events:
                args.extend((event.seq, event.type, event.json))
            keys = self._keys.run(log.run_id, log.session_id)
            await self._append(
                keys=[keys.meta, keys.events, keys.session_runs, self._keys.leases],
                args=args,
                client=pipeline,
            )
            plan.append((log, last.seq, final))
        if not plan:
            return True
        try:
            results = await pipeline.execute()
        except (RedisError, OSError) as exc:
            for log, _, _ in plan:
                self._pending.setdefault(log.run_id, log)
            self._unreachable(exc)
            return False
        self._reachable()
        for (log, top, final), result in zip(plan, results, strict=True):
            if int(result) == -1:
                self._taken_over(log)
                continue
            if int(result) == -2:
                log.mirrored = 0
                self.changed(log)
                continue
            log.mirrored = top
            if final:
                self._live.pop(log.run_id, None)
        return True

    def _taken_over(self, log: MirroredEventLog) -> None:
        """Another instance ended this run (its lease had lapsed): stop it here too."""
        self._live.pop(log.run_id, None)
        if self._cancel_local(log.run_id, "interrupted"):
            logger.warning(
                "run %s was taken over by another instance (its lease lapsed); stopped here",
                log.run_id,
            )

    # --- leases and cancels -------------------------------------------------------------

    def _lease_expiry_ms(self) -> int:
        return int((time.time() + self._lease_s) * 1000)

    async def _keep_leases(self) -> None:
        """Renew this instance's leases; pick up cancels whose message was missed."""
        while True:
            await anyio.sleep(self._lease_s / 3)
            live = [log for log in self._live.values() if log.mirrored]
            if not live:
                continue
            expiry = self._lease_expiry_ms()
            try:
                pipeline = self._client.pipeline(transaction=False)
                pipeline.zadd(self._keys.leases, {str(log.run_id): expiry for log in live}, xx=True)
                pipeline.expire(self._keys.leases, self._live_ttl_s)
                for log in live:
                    pipeline.hget(self._keys.meta(log.run_id), "cancel")
                results = await pipeline.execute()
            except (RedisError, OSError) as exc:
                self._unreachable(exc)
                continue
            for log, flag in zip(live, results[2:], strict=True):
                if flag:
                    self._cancel_local(log.run_id, _status(flag))

    async def _hear_cancels(self) -> None:
        while True:
            try:
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(self._keys.cancel_channel)
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        run_id, _, status = message["data"].decode().partition(" ")
                        self._cancel_local(uuid.UUID(run_id), _status(status))
            except (RedisError, OSError, ValueError) as exc:
                self._unreachable(exc)
                await anyio.sleep(RETRY_S)

    # --- health ---------------------------------------------------------------------

    def _unreachable(self, exc: BaseException) -> None:
        if self.reachable:
            self.reachable = False
            logger.warning(
                "Redis unreachable for shared runs (%s): runs go on and are saved to the "
                "database; other instances cannot follow them until it is back",
                type(exc).__name__,
            )

    def _reachable(self) -> None:
        if not self.reachable:
            self.reachable = True
            logger.warning("Redis reachable again: shared runs resumed")


def _status(value: str | bytes) -> MessageStatus:
    text = value.decode() if isinstance(value, bytes) else value
    return "interrupted" if text == "interrupted" else "cancelled"
