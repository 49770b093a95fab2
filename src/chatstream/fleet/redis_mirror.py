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
import math
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from chatstream.fleet.redis_keys import (
    APPEND,
    OWNER_FENCE,
    RENEW,
    RESEND_ALL,
    RESEND_FROM,
    TAKEN_OVER,
    Keys,
)
from chatstream.fleet.redis_log import MirroredEventLog
from chatstream.fleet.redis_remote import entry_event
from chatstream.logs import log_fault
from chatstream.runs.events import Event, MessageStatus

logger = logging.getLogger(__name__)

FLUSH_TICK_S = 0.005  # at most one pipeline per tick: its appends go together
RETRY_S = 0.5
SHUTDOWN_FLUSH_S = 5.0
MAX_SCRIPT_FAILURES = 5
FLUSH_TIMEOUT_MIN_S = 2.0
ADOPT_PATIENCE_S = 60.0  # for the end of a run taken over, as its taker writes it


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
        self._flush_timeout_s = max(lease_s / 3, FLUSH_TIMEOUT_MIN_S)
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

    def forget(self, log: MirroredEventLog) -> None:
        """The run has ended here without Redis taking its end: stop renewing its lease."""
        self._live.pop(log.run_id, None)

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
        for log in self._live.values():
            log.publish_all(staging=False)  # Redis did not take them: readers here still do
        assert self._tasks is not None
        self._tasks.cancel_scope.cancel()
        await self._tasks.__aexit__(exc_type, exc, tb)

    # --- events ---------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        flushed_at = -math.inf
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            # At most one pipeline per tick, so that under load a tick's appends go out
            # together; but the first event after a quiet spell goes at once, since this
            # process' own readers wait for it. (Sleeping 0 still lets the appends of
            # the current upstream read join.)
            await anyio.sleep(max(flushed_at + FLUSH_TICK_S - anyio.current_time(), 0))
            flushed_at = anyio.current_time()
            if not await self.flush():
                await anyio.sleep(RETRY_S)
                self._wake.set()

    async def flush(self) -> bool:
        """Write every pending run's new events in one pipeline; False if Redis failed."""
        async with self._flushing:
            batch, self._pending = self._pending, {}
            plan = [
                (log, log.unmirrored())
                for log in batch.values()
                if not (log.taken_over or log.refused)
            ]
            plan = [(log, events) for log, events in plan if events]
            if not plan:
                return True
            try:
                # Readers here wait for this pipeline: a Redis that hangs is treated as
                # gone well before the client's own timeout and retries would say so.
                with anyio.fail_after(self._flush_timeout_s):
                    results = await self._run_scripts(
                        APPEND, [self._append_call(log, events) for log, events in plan]
                    )
            except (RedisError, OSError, TimeoutError) as exc:
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
            OWNER_FENCE,
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
            # Still held here (its lease renewed, so nobody takes over a run that
            # lives) until it has ended and is saved; its readers here go on.
            self._failures.pop(log.run_id, None)
            log.publish_all(staging=False)
            log.refused = True
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
            log.publish(log.mirrored)
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
        """Another instance ended this run (its lease had lapsed): stop it here too.

        What this process generated since is never written (its fencing token
        is stale), and its own readers get the run's end as the taker wrote it.
        """
        self._live.pop(log.run_id, None)
        if log.taken_over:
            return
        log.taken_over = True
        if self._cancel_local(log.run_id, "interrupted"):
            logger.warning(
                "run %s was taken over by another instance (its lease lapsed); stopped here",
                log.run_id,
            )
        assert self._tasks is not None
        self._tasks.start_soon(self._adopt_ending, log)

    async def _adopt_ending(self, log: MirroredEventLog) -> None:
        """Hand this process' readers of a run taken over the end its taker writes."""
        first = f"0-{log.mirrored + 1}" if log.mirrored else "-"
        with anyio.move_on_after(ADOPT_PATIENCE_S):
            while True:
                try:
                    entries: Any = await self._client.xrange(self._keys.events(log.run_id), first)
                    if log.adopt([entry_event(entry_id, data) for entry_id, data in entries]):
                        return
                except (RedisError, OSError) as exc:
                    self._unreachable(exc)
                await anyio.sleep(RETRY_S)
        # The taker never finished (it died too, and so may its own taker): the
        # readers here get what this process staged, so that they are not left waiting.
        log.publish_all(staging=False)

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
        keys = [self._keys.leases, *(self._keys.meta(log.run_id) for log in live)]
        args: list[Any] = [self._lease_ms, self.live_ttl_s]
        for log in live:
            args.extend((str(log.run_id), OWNER_FENCE))
        (renewed,) = await self._run_scripts(RENEW, [(keys, args)])
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
                    # (An instance with no live runs learns here that Redis is back:
                    # its sweeper waits for that.)
                    self._reachable()
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        run_id, _, status = message["data"].decode().partition(" ")
                        try:
                            self._cancel_local(uuid.UUID(run_id), _status(status))
                        except ValueError:
                            logger.warning("ignored a malformed cancel message on Redis")
            except (RedisError, OSError) as exc:
                self._unreachable(exc)
                await anyio.sleep(RETRY_S)

    # --- health ---------------------------------------------------------------------

    def _unreachable(self, exc: BaseException) -> None:
        if self.reachable:
            self.reachable = False
            # The runs go on for their readers here without waiting for Redis.
            for log in self._live.values():
                log.publish_all(staging=False)
            logger.warning(
                "Redis unreachable for shared runs (%s): runs go on and are saved to the "
                "database; other instances cannot follow them until it is back",
                type(exc).__name__,
            )

    def _reachable(self) -> None:
        if not self.reachable:
            self.reachable = True
            self.reachable_since = anyio.current_time()
            for log in self._live.values():
                log.staging = not (log.taken_over or log.refused)
            # Leases lapsed while Redis was away: renew them before anyone sweeps.
            self._renew_now.set()
            logger.warning("Redis reachable again: shared runs resumed")


def _status(value: str | bytes) -> MessageStatus:
    text = value.decode() if isinstance(value, bytes) else value
    return "interrupted" if text == "interrupted" else "cancelled"
