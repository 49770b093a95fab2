"""Runs whose instance died: ended by whichever instance notices first.

Every live run's owning instance renews its lease in Redis. When a lease
lapses (`CHATSTREAM_RUN_LEASE_S` without renewal: a kill -9, a lost
machine), one instance claims the run (atomically: one wins) and ends it as
contract §6 says: the rows its log stands for are persisted as
`interrupted`, with exactly the text that was streamed, then `error`
(`server_shutdown`, retryable) and `done` are appended, so every follower,
on any instance, sees the run end. Writes are idempotent on message ids: a
restarted instance recovering the same run writes nothing twice.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import anyio
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from chatstream.logs import log_fault
from chatstream.runs.events import DoneEvent, ErrorEvent
from chatstream.runs.redis_keys import CLAIM, FINISH_TAKEN_OVER, Keys
from chatstream.runs.redis_remote import entry_event
from chatstream.runs.replay import rows_from_events
from chatstream.runs.run import RunStore
from chatstream.storage.records import RunOutput

logger = logging.getLogger(__name__)

TAKEN_OVER_MESSAGE = (
    "The server generating this answer stopped; what it had streamed is saved. Try again."
)


class LeaseSweeper:
    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        instance: str,
        *,
        lease_s: float,
        retention_s: float,
        store: RunStore,
    ) -> None:
        self._client = client
        self._keys = keys
        self._instance = instance
        self._interval_s = max(lease_s / 3, 0.05)
        self._retention_s = max(int(retention_s), 1)
        self._store = store
        self._claim = client.register_script(CLAIM)
        self._finish = client.register_script(FINISH_TAKEN_OVER)

    async def run_forever(self) -> None:
        while True:
            await anyio.sleep(self._interval_s)
            try:
                await self.sweep()
            except (RedisError, OSError):
                pass  # the mirror reports Redis outages; try again next time
            except Exception:
                log_fault(logger, "sweeping lapsed leases failed")

    async def sweep(self) -> int:
        """End every run whose lease has lapsed and that this instance claims; how many."""
        now_ms = int(time.time() * 1000)
        lapsed: Any = await self._client.zrangebyscore(self._keys.leases, "-inf", now_ms)
        ended = 0
        for member in lapsed:
            run_id = uuid.UUID(member.decode())
            won = await self._claim(
                keys=[self._keys.leases, self._keys.meta(run_id)],
                args=[now_ms, str(run_id), self._instance],
            )
            if int(won) == 1:
                await self._end(run_id)
                ended += 1
        return ended

    async def _end(self, run_id: uuid.UUID) -> None:
        fields: Any = await self._client.hmget(self._keys.meta(run_id), "owner", "session")
        owner, session = fields[0].decode(), uuid.UUID(fields[1].decode())
        entries: Any = await self._client.xrange(self._keys.events(run_id))
        events = [entry_event(entry_id, data) for entry_id, data in entries]
        rows = rows_from_events(run_id, events, "interrupted")
        persisted = await self._store.save(RunOutput(owner, session, rows))
        last = events[-1].seq if events else 0
        error: ErrorEvent = {
            "type": "error",
            "code": "server_shutdown",
            "message": TAKEN_OVER_MESSAGE,
            "retryable": True,
        }
        done: DoneEvent = {
            "type": "done",
            "message_id": str(run_id),
            "status": "interrupted",
            "finish_reason": None,
            "persisted": persisted,
            "usage": None,
            "metrics": None,
        }
        await self._finish(
            keys=[self._keys.meta(run_id), self._keys.events(run_id)],
            args=[
                self._instance,
                self._retention_s,
                "interrupted",
                last + 1,
                "error",
                orjson.dumps(error),
                last + 2,
                "done",
                orjson.dumps(done),
            ],
        )
        logger.warning(
            "run %s: its instance stopped renewing its lease; ended here as interrupted "
            "with the %d characters it had streamed",
            run_id,
            len(rows[-1].content),
        )
