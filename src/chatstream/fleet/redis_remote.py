"""Runs of other instances, reached through Redis: follow, inspect, cancel.

A `RemoteRun` is the `RunHandle` of a run some other instance generates.
Its events are read from the run's stream (a blocking XREAD per batch, from
`0-<after>`), so a follower here sees exactly what followers there see, in
the same numbering; a cancel sets a durable flag and tells the owner at
once over pub/sub.

Blocking reads use their own connection pool (`readers`), so that however
many clients follow remote runs, the control path (mirroring, leases,
cancels, lookups) always has connections. A read blocks for less than the
readers' socket timeout; a Redis that stays away longer than a lease ends
the follow with `RunStreamLost` (the client resumes from its last event).
"""

from __future__ import annotations

import contextlib
import math
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from chatstream.errors import ServiceUnavailable
from chatstream.fleet.redis_keys import CANCEL, Keys
from chatstream.runs.events import EVENT_TYPES, Event, EventType, MessageStatus
from chatstream.runs.handle import RunState
from chatstream.runs.log import Pusher

READ_COUNT = 1000
READ_BLOCK_S = 5.0  # below the readers' socket timeout (shared.py)
RETRY_S = 0.25
_TYPES: dict[bytes, EventType] = {name.encode(): name for name in EVENT_TYPES}


class RunStreamLost(ServiceUnavailable):
    """A remote run's stream cannot be read now (Redis is away, or lost it)."""

    default_message = (
        "This answer's stream is not reachable now; resume it from its last event shortly."
    )


class RemoteRun:
    def __init__(
        self,
        control: aioredis.Redis,
        readers: aioredis.Redis,
        keys: Keys,
        run_id: uuid.UUID,
        session_id: uuid.UUID,
        *,
        patience_s: float,
    ) -> None:
        self._control = control
        self._readers = readers
        self._keys = keys
        self.id = run_id
        self.session_id = session_id
        # How long a follower waits for Redis (or for the run to reappear in it).
        self._patience_s = patience_s

    async def _meta(self) -> tuple[bytes | None, int]:
        fields: Any = await self._control.hmget(self._keys.meta(self.id), "status", "last_seq")
        return fields[0], int(fields[1] or 0)

    async def state(self) -> RunState:
        status, last_seq = await self._meta()
        if status is None:
            # Its keys expired (or Redis lost them): ended, for all anyone can tell here.
            return RunState("interrupted", last_seq)
        return RunState(_final(status), last_seq)

    async def cancel(self, status: MessageStatus = "cancelled") -> bool:
        answer: Any = await self._control.eval(CANCEL, 1, self._keys.meta(self.id), status)
        if int(answer[0]) != 1:
            return False
        # If the message is lost, the flag is set: the owner sees it when it renews its lease.
        with contextlib.suppress(RedisError, OSError):
            await self._control.publish(self._keys.cancel_channel, f"{self.id} {status}")
        return True

    @asynccontextmanager
    async def follow(
        self, after: int = 0, idle_timeout: float | None = None, push: Pusher | None = None
    ) -> AsyncIterator[AsyncIterator[list[Event]]]:
        events = self._read(after, idle_timeout or math.inf)
        try:
            yield events
        finally:
            await events.aclose()

    async def _read(self, after: int, idle_timeout: float) -> AsyncGenerator[list[Event]]:
        stream = self._keys.events(self.id)
        position = after
        block_s = min(idle_timeout, READ_BLOCK_S)
        quiet_since = anyio.current_time()
        trouble_since: float | None = None  # Redis failing, or the run missing from it
        while True:
            try:
                answer: Any = await self._readers.xread(
                    {stream: f"0-{position}"}, count=READ_COUNT, block=max(int(block_s * 1000), 1)
                )
                entries = answer[0][1] if answer else []
                status, last_seq = (None, 0) if entries else await self._meta()
            except (RedisError, OSError):
                trouble_since = trouble_since or anyio.current_time()
                if anyio.current_time() - trouble_since > self._patience_s:
                    raise RunStreamLost() from None
                await anyio.sleep(RETRY_S)
                continue
            if entries:
                trouble_since = None
                batch = [entry_event(entry_id, fields) for entry_id, fields in entries]
                position = batch[-1].seq
                quiet_since = anyio.current_time()
                yield batch
                if batch[-1].is_terminal:
                    return
                continue
            if status is None:
                # Gone from Redis mid-follow (a restart; its owner writes it
                # again shortly) or expired: wait a lease for it, then give up.
                trouble_since = trouble_since or anyio.current_time()
                if anyio.current_time() - trouble_since > self._patience_s:
                    raise RunStreamLost()
                await anyio.sleep(RETRY_S)
                continue
            trouble_since = None
            if _final(status) is not None and last_seq <= position:
                return  # ended, and the reader has everything
            if anyio.current_time() - quiet_since >= idle_timeout:
                quiet_since = anyio.current_time()
                yield []

    async def wait(self) -> None:
        async with self.follow((await self.state()).last_seq) as batches:
            async for _ in batches:
                pass


class SharedRuns:
    """Lookups of runs in Redis, whichever instance generates them."""

    def __init__(
        self, control: aioredis.Redis, readers: aioredis.Redis, keys: Keys, *, patience_s: float
    ) -> None:
        self._control = control
        self._readers = readers
        self._keys = keys
        self._patience_s = patience_s

    def _handle(self, run_id: uuid.UUID, session: bytes) -> RemoteRun:
        return RemoteRun(
            self._control,
            self._readers,
            self._keys,
            run_id,
            uuid.UUID(session.decode()),
            patience_s=self._patience_s,
        )

    async def get(self, run_id: uuid.UUID, owner: str) -> RemoteRun | None:
        fields: Any = await self._control.hmget(self._keys.meta(run_id), "owner", "session")
        found_owner, session = fields
        if found_owner is None or found_owner.decode() != owner or session is None:
            return None
        return self._handle(run_id, session)

    async def live_in_session(self, session_id: uuid.UUID, owner: str) -> Sequence[RemoteRun]:
        members: Any = await self._control.smembers(self._keys.session_runs(session_id))
        run_ids = [uuid.UUID(member.decode()) for member in members]
        if not run_ids:
            return []
        pipeline = self._control.pipeline(transaction=False)
        for run_id in run_ids:
            pipeline.hmget(self._keys.meta(run_id), "owner", "session", "status")
        found: Any = await pipeline.execute()
        return [
            self._handle(run_id, session)
            for run_id, (run_owner, session, status) in zip(run_ids, found, strict=True)
            if run_owner is not None
            and run_owner.decode() == owner
            and session is not None
            and status is not None
            and _final(status) is None
        ]


def entry_event(entry_id: bytes, fields: dict[bytes, bytes]) -> Event:
    """One stream entry as the event it holds."""
    seq = int(entry_id.split(b"-", 1)[1])
    return Event.from_json(seq, _TYPES[fields[b"t"]], fields[b"d"])


def _final(status: bytes) -> MessageStatus | None:
    """The final status, or None while the run is live (or being ended)."""
    if status in (b"live", b"ending"):
        return None
    return status.decode()  # type: ignore[return-value]
