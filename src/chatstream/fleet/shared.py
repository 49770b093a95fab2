"""An instance's link to the other instances: one Redis client, opened and closed together.

With `CHATSTREAM_REDIS_URL`, `SharedRunsLink` is entered in the lifespan
before the run registry (and left after it, so that the last events of the
runs ended at shutdown are written). It hands out:

    log_for(spec)     each run's event log, mirrored to Redis (fleet/redis_mirror.py)
    shared            lookups of every instance's runs (fleet/redis_remote.py)
    sweeping(store)   the task that ends runs whose instance died (fleet/redis_takeover.py)
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from types import TracebackType

import anyio
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from chatstream.config import Settings
from chatstream.fleet.redis_keys import Keys
from chatstream.fleet.redis_mirror import RunMirror
from chatstream.fleet.redis_remote import READ_BLOCK_S, SharedRuns
from chatstream.fleet.redis_takeover import LeaseSweeper
from chatstream.runs.events import MessageStatus
from chatstream.runs.log import EventLog
from chatstream.runs.run import RunStore
from chatstream.runs.spec import RunSpec
from chatstream.startup import CHECK_TIMEOUT_S, redis_failure
from chatstream.storage.repository import Store

CONTROL_TIMEOUT_S = 5.0
CONTROL_CONNECTIONS = 64

StopLocal = Callable[[uuid.UUID, MessageStatus], bool]


class SharedRunsLink:
    def __init__(self, settings: Settings, instance: str) -> None:
        assert settings.redis_url is not None
        self._settings = settings
        self._url = settings.redis_url
        self.instance = instance
        # Two pools: the control path (mirroring, leases, cancels, lookups) must
        # never wait behind the blocking reads of remote followers.
        self.client = aioredis.Redis.from_url(
            self._url, socket_timeout=CONTROL_TIMEOUT_S, max_connections=CONTROL_CONNECTIONS
        )
        self.readers = aioredis.Redis.from_url(
            self._url,
            socket_timeout=READ_BLOCK_S + CONTROL_TIMEOUT_S,
            socket_keepalive=True,
            max_connections=settings.redis_max_followers,
        )
        self.keys = Keys(f"{settings.redis_key_prefix}:shared")
        # A follower waits this long for Redis (or for a run Redis lost) to come back.
        patience_s = settings.run_lease_s + 1
        self.shared = SharedRuns(self.client, self.readers, self.keys, patience_s=patience_s)
        # Set once the registry exists: how a cancel from elsewhere reaches a local run.
        self.stop_local: StopLocal = lambda run_id, status: False
        self.mirror = RunMirror(
            self.client,
            self.keys,
            instance,
            lease_s=settings.run_lease_s,
            retention_s=settings.run_retention_s,
            max_run_s=settings.max_run_duration_s,
            cancel_local=lambda run_id, status: self.stop_local(run_id, status),
        )

    async def __aenter__(self) -> SharedRunsLink:
        try:
            with anyio.fail_after(CHECK_TIMEOUT_S):
                await self.client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            await self.client.aclose()
            await self.readers.aclose()
            raise redis_failure(self._url, exc, "CHATSTREAM_REDIS_URL") from None
        await self.mirror.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.mirror.__aexit__(exc_type, exc, tb)
        finally:
            await self.client.aclose()
            await self.readers.aclose()

    def log_for(self, spec: RunSpec) -> EventLog:
        return self.mirror.log_for(spec.message_id, spec.owner, spec.session_id)

    async def ping(self) -> None:
        await self.client.ping()

    async def statuses(self, run_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str | None]:
        """Each run's status in Redis (`live`, `ending`, or how it ended); None: not there."""
        pipeline = self.client.pipeline(transaction=False)
        for run_id in run_ids:
            pipeline.hget(self.keys.meta(run_id), "status")
        found = await pipeline.execute()
        return {
            run_id: value.decode() if value is not None else None
            for run_id, value in zip(run_ids, found, strict=True)
        }

    @asynccontextmanager
    async def sweeping(self, journal: RunStore, store: Store) -> AsyncIterator[None]:
        """While inside: end, as interrupted, runs whose instance stopped renewing their lease."""
        sweeper = LeaseSweeper(
            self.client,
            self.keys,
            self.mirror,
            lease_s=self._settings.run_lease_s,
            retention_s=self._settings.run_retention_s,
            journal=journal,
            store=store,
        )
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(sweeper.run_forever)
            yield
            tasks.cancel_scope.cancel()
