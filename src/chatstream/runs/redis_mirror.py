"""This instance's runs, mirrored to Redis so that every instance can follow them.

    run ── append ──▶ MirroredEventLog (memory: this instance's followers read here)
                            │ changed
                            ▼
                      RunMirror flusher ── one pipeline per tick ──▶ Redis stream per run
    lease keeper ── every lease/3 (and on reconnect) ──▶ a run whose lease lapses is taken over
    cancel listener ◀── pub/sub (and the durable flag, checked with each renewal) ── any instance

The run itself never waits for Redis: appends go to memory and are written
in batches (a pipeline per tick, not a round trip per token). When Redis
goes away, the run goes on and persists to the database as always; what
was not mirrored yet stays pending and is written once Redis is back, from
wherever Redis' copy stops (after a restart that lost everything, the run
is written again from its first event). One run Redis refuses never holds
up the others: each script in a pipeline is judged on its own.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from chatstream.logs import log_fault
from chatstream.runs.events import Event, EventPayload, MessageStatus
from chatstream.runs.log import MemoryEventLog
from chatstream.runs.redis_keys import (
    APPEND,
    RENEW,
    RESEND_ALL,
    RESEND_FROM,
    TAKEN_OVER,
    Keys,
)

logger = logging.getLogger(__name__)

FLUSH_TICK_S = 0.005  # gather a tick's appends into one pipeline
RETRY_S = 0.5
SHUTDOWN_FLUSH_S = 5.0
MAX_SCRIPT_FAILURES = 5


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
        self._lease_ms = int(lease_s * 1000)
        self._retention_s = max(int(retention_s), 1)
        # Longer than any run may live: a key is never left without an expiry.
        self.live_ttl_s = int(max_run_s + retention_s + 4 * lease_s) + 1
        self._cancel_local = cancel_local
        self._scripts: dict[str, str] = {}  # source → sha, loaded once (again after a restart)
        self._pending: dict[uuid.UUID, MirroredEventLog] = {}
        self._live: dict[uuid.UUID, MirroredEventLog] = {}
        self._failures: dict[uuid.UUID, int] = {}
        self._wake = anyio.Event()
        self._renew_now = anyio.Event()
        self._flushing = anyio.Lock()
        self._tasks: anyio.abc.TaskGroup | None = None
        self.reachable = True
        # Since when Redis has answered without a failure (for the sweeper's caution).
        self.reachable_since = anyio.current_time()

    def log_for(self, run_id: uuid.UUID, owner: str, session_id: uuid.UUID) -> MirroredEventLog:
        log = MirroredEventLog(self, run_id, owner, session_id)
        self._live[run_id] = log
        return log

    def holds(self, run_id: uuid.UUID) -> bool:
        """Whether this process generates the run right now (its lease is ours to renew)."""
        return run_id in self._live

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
        # The runs have ended (the registry closed first): their last events go
        # out, retried until the deadline; otherwise their leases would lapse
        # and another instance would end runs that are already saved.
        with anyio.move_on_after(SHUTDOWN_FLUSH_S, shield=True):
            while self._pending:
                if not await self.flush():
                    await anyio.sleep(RETRY_S)
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
        async with self._flushing:
            batch, self._pending = self._pending, {}
            plan = [(log, log.after(log.mirrored)) for log in batch.values()]
            plan = [(log, events) for log, events in plan if events]
            if not plan:
                return True
            try:
                results = await self._run_scripts(
                    APPEND, [self._append_call(log, events) for log, events in plan]
                )
            except (RedisError, OSError) as exc:
                for log, _ in plan:
                    self._pending.setdefault(log.run_id, log)
                self._unreachable(exc)
                return False
            self._reachable()
            for (log, events), result in zip(plan, results, strict=True):
                self._settle(log, events, result)
            return True

    def _append_call(
        self, log: MirroredEventLog, events: list[Event]
    ) -> tuple[list[str], list[Any]]:
        last = events[-1]
        final = str(last.data["status"]) if last.is_terminal else ""  # type: ignore[typeddict-item]
        args: list[Any] = [
            self.instance,
            log.owner,
            str(log.session_id),
            self.live_ttl_s,
            self._retention_s,
            self._lease_ms,
            final,
            str(log.run_id),
        ]
        for event in events:
            args.extend((event.seq, event.type, event.json))
        keys = self._keys.run(log.run_id, log.session_id)
        return [keys.meta, keys.events, keys.session_runs, self._keys.leases], args

    def _settle(self, log: MirroredEventLog, events: list[Event], result: Any) -> None:
        """What Redis said of one run's append."""
        if isinstance(result, Exception):
            # Redis refused this run's script (not the connection): retry it
            # alone a few times, then give it up; the others go on regardless.
            failures = self._failures[log.run_id] = self._failures.get(log.run_id, 0) + 1
            if failures < MAX_SCRIPT_FAILURES:
                self._pending.setdefault(log.run_id, log)
                return
            logger.error(
                "run %s: Redis keeps refusing its events (%s); other instances cannot follow it",
                log.run_id,
                type(result).__name__,
            )
            self._live.pop(log.run_id, None)
            self._failures.pop(log.run_id, None)
            return
        self._failures.pop(log.run_id, None)
        code, value = int(result[0]), int(result[1])
        if code == TAKEN_OVER:
            self._taken_over(log)
        elif code in (RESEND_ALL, RESEND_FROM):
            log.mirrored = value if code == RESEND_FROM else 0
            self.changed(log)
        else:
            log.mirrored = events[-1].seq
            if events[-1].is_terminal:
                self._live.pop(log.run_id, None)

    async def _run_scripts(
        self, source: str, calls: list[tuple[list[str], list[Any]]]
    ) -> list[Any]:
        """One pipeline of EVALSHA calls; per-call errors come back as exceptions in the list.

        (Not redis-py's Script objects: their pipelines ask SCRIPT EXISTS first,
        a second round trip per flush.) A script Redis forgot (a restart) is
        loaded again, and the pipeline sent once more.
        """
        for attempt in (1, 2):
            sha = self._scripts.get(source)
            if sha is None:
                sha = self._scripts[source] = str(await self._client.script_load(source))
            pipeline = self._client.pipeline(transaction=False)
            for keys, args in calls:
                pipeline.evalsha(sha, len(keys), *keys, *args)
            results: list[Any] = await pipeline.execute(raise_on_error=False)
            if attempt == 1 and any(isinstance(r, NoScriptError) for r in results):
                self._scripts.pop(source, None)
                continue
            return results
        raise AssertionError("unreachable")

    def _taken_over(self, log: MirroredEventLog) -> None:
        """Another instance ended this run (its lease had lapsed): stop it here too."""
        self._live.pop(log.run_id, None)
        if self._cancel_local(log.run_id, "interrupted"):
            logger.warning(
                "run %s was taken over by another instance (its lease lapsed); stopped here",
                log.run_id,
            )

    # --- leases and cancels -------------------------------------------------------------

    async def _keep_leases(self) -> None:
        """Renew this instance's leases; pick up cancels whose message was missed."""
        while True:
            with anyio.move_on_after(self._lease_s / 3):
                await self._renew_now.wait()
            self._renew_now = anyio.Event()
            live = [log for log in self._live.values() if log.mirrored]
            if not live:
                continue
            try:
                await self._renew(live)
            except (RedisError, OSError) as exc:
                self._unreachable(exc)
            except Exception:
                log_fault(logger, "renewing run leases failed")

    async def _renew(self, live: list[MirroredEventLog]) -> None:
        args = [self._lease_ms, self.live_ttl_s, *(str(log.run_id) for log in live)]
        (renewed,) = await self._run_scripts(RENEW, [([self._keys.leases], args)])
        if isinstance(renewed, Exception):
            raise renewed
        pipeline = self._client.pipeline(transaction=False)
        for log in live:
            pipeline.hget(self._keys.meta(log.run_id), "cancel")
        flags = await pipeline.execute()
        self._reachable()
        for log, flag in zip(live, flags, strict=True):
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
            self.reachable_since = anyio.current_time()
            # Leases lapsed while Redis was away: renew them before anyone sweeps.
            self._renew_now.set()
            logger.warning("Redis reachable again: shared runs resumed")


def _status(value: str | bytes) -> MessageStatus:
    text = value.decode() if isinstance(value, bytes) else value
    return "interrupted" if text == "interrupted" else "cancelled"
