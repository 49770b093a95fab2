"""Runs whose instance died: ended by whichever instance notices first.

Every live run's owning instance renews its lease in Redis. When a lease
lapses (`CHATSTREAM_RUN_LEASE_S` without renewal: a kill -9, a lost
machine), one instance claims the run (atomically: one wins, and holds it
under a lease of its own until it has ended it, so a taker that dies too is
taken over in turn) and ends it as contract §6 says: the rows its log
stands for are persisted as `interrupted` (or `cancelled`, when a cancel was
asked for), with exactly the text that was streamed, then `error`
(`server_shutdown`, retryable) and `done` are appended, so every follower,
on any instance, sees the run end. If the dead instance had saved the run
before it died, those rows are the truth and nothing is written again.

A sweeper is careful: it never takes over a run this process still
generates, and it only sweeps once Redis has answered for a whole lease
(after an outage every lease looks lapsed until their owners renew them).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import anyio
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from chatstream.errors import DatabaseUnavailable
from chatstream.fleet.redis_keys import CLAIM, FINISH_TAKEN_OVER, LAPSED, Keys
from chatstream.fleet.redis_mirror import RunMirror
from chatstream.fleet.redis_remote import entry_event
from chatstream.logs import log_fault
from chatstream.runs.events import DoneEvent, ErrorEvent, Event, EventPayload, MessageStatus
from chatstream.runs.replay import rows_from_events
from chatstream.runs.run import RunStore
from chatstream.storage.records import RunOutput
from chatstream.storage.repository import Store

logger = logging.getLogger(__name__)

TAKEN_OVER_MESSAGE = (
    "The server generating this answer stopped; what it had streamed is saved. Try again."
)


class LeaseSweeper:
    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        mirror: RunMirror,
        *,
        lease_s: float,
        retention_s: float,
        journal: RunStore,
        store: Store,
    ) -> None:
        self._client = client
        self._keys = keys
        self._mirror = mirror
        self._instance = mirror.instance
        self._lease_s = lease_s
        self._lease_ms = int(lease_s * 1000)
        self._interval_s = max(lease_s / 3, 0.05)
        self._retention_s = max(int(retention_s), 1)
        self._journal = journal
        self._store = store

    async def run_forever(self) -> None:
        while True:
            await anyio.sleep(self._interval_s)
            try:
                await self.sweep()
            except (RedisError, OSError, DatabaseUnavailable):
                pass  # outages are reported where they matter; try again next time
            except Exception:
                log_fault(logger, "sweeping lapsed leases failed")

    async def sweep(self) -> int:
        """End every run whose lease has lapsed and that this instance claims; how many."""
        mirror = self._mirror
        steady = anyio.current_time() - mirror.reachable_since >= self._lease_s
        if not (mirror.reachable and steady):
            return 0
        lapsed: Any = await self._client.eval(LAPSED, 1, self._keys.leases)
        ended = 0
        for member in lapsed:
            run_id = uuid.UUID(member.decode())
            if mirror.holds(run_id):
                continue  # ours, alive: our own renewal is due, not a takeover
            won: Any = await self._client.eval(
                CLAIM,
                2,
                self._keys.leases,
                self._keys.meta(run_id),
                str(run_id),
                self._instance,
                self._lease_ms,
            )
            if int(won[0]) == 1:
                await self._end(run_id, fence=int(won[1]))
                ended += 1
        return ended

    async def _end(self, run_id: uuid.UUID, *, fence: int) -> None:
        fields: Any = await self._client.hmget(
            self._keys.meta(run_id), "owner", "session", "cancel", "last_seq"
        )
        owner, session = fields[0].decode(), uuid.UUID(fields[1].decode())
        asked: MessageStatus = "cancelled" if fields[2] else "interrupted"
        last = int(fields[3] or 0)
        saved = await self._store.run_rows(owner, run_id)
        if saved:
            # Its instance saved it, then died before telling Redis: those rows are the truth.
            rows, status, persisted = saved, _status(saved[-1].status), True
        else:
            entries: Any = await self._client.xrange(self._keys.events(run_id))
            events = [entry_event(entry_id, data) for entry_id, data in entries]
            rows, status = rows_from_events(run_id, events, asked), asked
            persisted = await self._journal.save(
                RunOutput(owner, session, rows, parent_id=_answered(events))
            )
        ending: list[EventPayload] = []
        if status in ("interrupted", "error"):
            error: ErrorEvent = {
                "type": "error",
                "code": "server_shutdown",
                "message": TAKEN_OVER_MESSAGE,
                "retryable": True,
            }
            ending.append(error)
        done: DoneEvent = {
            "type": "done",
            "message_id": str(run_id),
            "status": status,
            "finish_reason": rows[-1].finish_reason,
            "persisted": persisted,
            "usage": rows[-1].usage,  # type: ignore[typeddict-item]
            "metrics": rows[-1].metrics,  # type: ignore[typeddict-item]
        }
        ending.append(done)
        args: list[Any] = [self._instance, self._retention_s, status, str(run_id), fence]
        for offset, payload in enumerate(ending, start=1):
            args.extend((last + offset, payload["type"], orjson.dumps(payload)))
        finished: Any = await self._client.eval(
            FINISH_TAKEN_OVER,
            4,
            self._keys.meta(run_id),
            self._keys.events(run_id),
            self._keys.leases,
            self._keys.session_runs(session),
            *args,
        )
        if int(finished[0]) != 1:
            # This instance was too slow (its own lease on the run lapsed) and another
            # took the run from it: that one ends it; what was saved here stands.
            logger.warning("run %s: taken over from this instance while ending it", run_id)
            return
        logger.warning(
            "run %s: its instance stopped renewing its lease; ended here as %s with the %d "
            "characters it had streamed",
            run_id,
            status,
            len(rows[-1].content),
        )


def _answered(events: list[Event]) -> uuid.UUID | None:
    """The message the run answers, as its `start` event says (None: not in the log;
    the writer then finds it by the run's id)."""
    for event in events:
        if event.data["type"] == "start":
            return uuid.UUID(event.data["user_message_id"])
    return None


def _status(value: str) -> MessageStatus:
    if value in ("complete", "cancelled", "error", "interrupted"):
        return value  # type: ignore[return-value]
    return "interrupted"
