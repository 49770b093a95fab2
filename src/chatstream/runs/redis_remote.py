"""Runs of other instances, reached through Redis: follow, inspect, cancel.

A `RemoteRun` is the `RunHandle` of a run some other instance generates.
Its events are read from the run's stream (a blocking XREAD per batch, from
`0-<after>`), so a follower here sees exactly what followers there see, in
the same numbering; a cancel sets a durable flag and tells the owner at
once over pub/sub.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import redis.asyncio as aioredis

from chatstream.runs.events import EVENT_TYPES, Event, EventType, MessageStatus
from chatstream.runs.handle import RunState
from chatstream.runs.redis_keys import CANCEL, Keys

READ_COUNT = 1000
_TYPES: dict[bytes, EventType] = {name.encode(): name for name in EVENT_TYPES}


class RemoteRun:
    def __init__(
        self, client: aioredis.Redis, keys: Keys, run_id: uuid.UUID, session_id: uuid.UUID
    ) -> None:
        self._client = client
        self._keys = keys
        self.id = run_id
        self.session_id = session_id
        self._cancel = client.register_script(CANCEL)

    async def state(self) -> RunState:
        fields: Any = await self._client.hmget(self._keys.meta(self.id), "status", "last_seq")
        status, last_seq = fields
        if status is None:
            # Its keys expired (or Redis lost them): ended, for all anyone can tell here.
            return RunState("interrupted", int(last_seq or 0))
        return RunState(_final(status), int(last_seq or 0))

    async def cancel(self, status: MessageStatus = "cancelled") -> bool:
        live = await self._cancel(keys=[self._keys.meta(self.id)], args=[status])
        if int(live) != 1:
            return False
        await self._client.publish(self._keys.cancel_channel, f"{self.id} {status}")
        return True

    @asynccontextmanager
    async def follow(
        self, after: int = 0, idle_timeout: float | None = None
    ) -> AsyncIterator[AsyncIterator[list[Event]]]:
        events = self._read(after, idle_timeout or math.inf)
        try:
            yield events
        finally:
            await events.aclose()

    async def _read(self, after: int, idle_timeout: float) -> AsyncGenerator[list[Event]]:
        stream = self._keys.events(self.id)
        position = after
        # Block in slices, so an idle follower still gets its keepalive on time.
        block_s = min(idle_timeout, 5.0)
        quiet_since = anyio.current_time()
        while True:
            answer: Any = await self._client.xread(
                {stream: f"0-{position}"}, count=READ_COUNT, block=max(int(block_s * 1000), 1)
            )
            entries = answer[0][1] if answer else []
            if entries:
                batch = [entry_event(entry_id, fields) for entry_id, fields in entries]
                position = batch[-1].seq
                quiet_since = anyio.current_time()
                yield batch
                if batch[-1].is_terminal:
                    return
                continue
            state = await self.state()
            if state.status is not None and state.last_seq <= position:
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

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self._client = client
        self._keys = keys

    async def get(self, run_id: uuid.UUID, owner: str) -> RemoteRun | None:
        fields: Any = await self._client.hmget(self._keys.meta(run_id), "owner", "session")
        found_owner, session = fields
        if found_owner is None or found_owner.decode() != owner or session is None:
            return None
        return RemoteRun(self._client, self._keys, run_id, uuid.UUID(session.decode()))

    async def live_in_session(self, session_id: uuid.UUID, owner: str) -> Sequence[RemoteRun]:
        members: Any = await self._client.smembers(self._keys.session_runs(session_id))
        runs = []
        for member in sorted(members):
            run = await self.get(uuid.UUID(member.decode()), owner)
            if run is not None and (await run.state()).status is None:
                runs.append(run)
        return runs


def entry_event(entry_id: bytes, fields: dict[bytes, bytes]) -> Event:
    """One stream entry as the event it holds."""
    seq = int(entry_id.split(b"-", 1)[1])
    return Event.from_json(seq, _TYPES[fields[b"t"]], fields[b"d"])


def _final(status: bytes) -> MessageStatus | None:
    """The final status, or None while the run is live (or being ended)."""
    if status in (b"live", b"ending"):
        return None
    return status.decode()  # type: ignore[return-value]
