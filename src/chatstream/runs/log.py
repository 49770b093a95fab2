"""A run's event log: append-only, numbered 1..n, followed by any number of readers.

The writer (the run) never waits for readers. A reader holds nothing but its
position, so a slow or stuck reader costs the run nothing and other readers
nothing; what it has not read yet is the log itself, which is bounded by the
run's own output.

`EventLog` is the interface the API layer sees (via `Run.follow`); the memory
implementation below serves one process. A shared implementation (Redis
Streams) only has to offer the same `append` / `follow` pair.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Protocol

from chatstream.runs.events import Event, EventPayload


class EventLog(Protocol):
    @property
    def last_seq(self) -> int: ...

    @property
    def closed(self) -> bool: ...

    def append(self, payload: EventPayload) -> Event: ...

    def follow(self, after: int, idle_timeout: float) -> AsyncGenerator[list[Event]]:
        """Yield batches of the events with `seq > after`, live, until the terminal event.

        A batch holds every event available when the reader woke up, so a
        reader that fell behind catches up in one write. An empty batch means
        nothing happened for `idle_timeout` seconds (time for a keepalive).
        """
        ...


class MemoryEventLog:
    __slots__ = ("_closed", "_events", "_waiters")

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._waiters: list[asyncio.Future[bool]] = []
        self._closed = False

    @property
    def last_seq(self) -> int:
        return len(self._events)

    @property
    def closed(self) -> bool:
        return self._closed

    def append(self, payload: EventPayload) -> Event:
        if self._closed:
            raise RuntimeError("append to a closed event log")
        event = Event(len(self._events) + 1, payload)
        self._events.append(event)
        if event.is_terminal:
            self._closed = True
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(True)
        return event

    def after(self, seq: int) -> list[Event]:
        # Sequence numbers are list positions + 1, so "after seq" is a slice.
        return self._events[max(seq, 0) :]

    async def _wait(self, idle_timeout: float) -> bool:
        """Wait for the next append; False if `idle_timeout` passed first."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(idle_timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            # Timed out or cancelled: still listed (an append would have emptied the list).
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    async def follow(self, after: int, idle_timeout: float) -> AsyncGenerator[list[Event]]:
        position = after
        while True:
            batch = self.after(position)
            if batch:
                position = batch[-1].seq
                yield batch
                if batch[-1].is_terminal:
                    return
            elif self._closed:
                return  # the reader already has everything, terminal event included
            elif not await self._wait(idle_timeout):
                yield []


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)
