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
import bisect
import contextlib
import math
from array import array
from collections.abc import AsyncGenerator
from typing import Protocol

from chatstream.runs.events import EVENT_TYPES, Event, EventPayload

# Events kept as objects besides their JSON: the newest, which readers that
# keep up are still to read (between this many and twice as many).
RECENT_EVENTS = 32
# A reader that is behind (a late resume, a client that stopped reading) reads
# what it missed in batches of about this much JSON: the rest stays in the log,
# not in a copy of its own for each such reader.
FOLLOW_BATCH_BYTES = 64 * 1024


class Pusher(Protocol):
    """A caught-up reader that takes events the moment they are appended (no task switch).

    `push` runs inside `append` (or at the end of a `held` block, with all
    the events appended in it), so it must return at once. It returns False
    when it did not take the events (the reader then reads them from the
    log). After a push it could not finish at once, `wants_more` is False
    and the reader's task `drain`s it before anything else.
    """

    def push(self, events: list[Event]) -> bool: ...

    @property
    def wants_more(self) -> bool: ...

    async def drain(self) -> None: ...


class EventLog(Protocol):
    @property
    def last_seq(self) -> int: ...

    @property
    def closed(self) -> bool: ...

    @property
    def superseded(self) -> bool:
        """Another instance ended this run (it took it over): that instance saves it."""
        ...

    def append(self, payload: EventPayload) -> Event: ...

    def held(self) -> contextlib.AbstractContextManager[None]:
        """Events appended in the block reach caught-up readers together, at its end."""
        ...

    def follow(
        self, after: int, idle_timeout: float, push: Pusher | None = None
    ) -> AsyncGenerator[list[Event]]:
        """Yield batches of the events with `seq > after`, live, until the terminal event.

        A batch holds every event available when the reader woke up, so a
        reader that fell behind catches up in one write. An empty batch means
        nothing happened for `idle_timeout` seconds (time for a keepalive).
        With `push`, a reader that has caught up is handed each new event
        directly instead, until it declines one.
        """
        ...


class MemoryEventLog:
    """The log of one run in this process.

    Every event is kept as its JSON in one growing buffer, with an offset and
    a type code per event (about 50 bytes for a token's event, where the
    event object and its payload take about 300), and is frozen into one
    exact-size blob when the terminal event is appended: that is all an ended
    run's replay, kept for `CHATSTREAM_RUN_RETENTION_S`, needs. The newest
    events are also kept as objects, so that readers who keep up (nearly
    all) read them without decoding anything.
    """

    __slots__ = ("_closed", "_encoded", "_held", "_held_block", "_pushers", "_recent", "_waiters")

    def __init__(self) -> None:
        self._encoded = _EncodedEvents()
        self._recent: list[Event] = []  # the newest events, oldest first
        self._waiters: list[asyncio.Future[bool]] = []
        self._pushers: list[_Pushing] = []
        self._held: list[Event] | None = None  # in a `held` block: what it appended
        self._held_block = _HeldBlock(self)  # one per log: entered once per upstream read
        self._closed = False

    @property
    def last_seq(self) -> int:
        return len(self._encoded)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def superseded(self) -> bool:
        return False  # (one process: nobody else can end its runs)

    @property
    def retained_bytes(self) -> int:
        """What the log's events take once it has ended (their JSON and its index)."""
        return self._encoded.nbytes

    def append(self, payload: EventPayload) -> Event:
        if self._closed:
            raise RuntimeError("append to a closed event log")
        return self._add(Event(len(self._encoded) + 1, payload))

    def _add(self, event: Event) -> Event:
        """Make `event` (numbered next) readable, and hand it to the readers waiting."""
        # Encoded once, here, for the log and for every reader that sends it.
        self._encoded.append(event)
        recent = self._recent
        recent.append(event)
        if len(recent) >= 2 * RECENT_EVENTS:
            del recent[:-RECENT_EVENTS]
        if event.is_terminal:
            self._closed = True
            self._encoded.freeze()
            self._recent = []
        if self._pushers:
            if self._held is not None:
                self._held.append(event)
            else:
                self._offer([event])
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(True)
        return event

    def held(self) -> contextlib.AbstractContextManager[None]:
        """Events appended in the block reach caught-up readers together, at its end.

        For the events of one read from the upstream (a burst can bring
        dozens): one write to each client instead of one per token. Nothing
        waits longer: the block does not await, so the events would only
        have left one by one within the same turn of the event loop.
        """
        return self._held_block

    def _hand_on_held(self) -> None:
        events, self._held = self._held, None
        if events and self._pushers:
            self._offer(events)

    def _offer(self, events: list[Event]) -> None:
        """Hand `events` to each pushed reader; keep those that still take more."""
        self._pushers = [pushing for pushing in self._pushers if pushing.offer(events)]

    def after(self, seq: int, max_bytes: int | None = None) -> list[Event]:
        """The events after `seq`; with `max_bytes`, only the first of those older than the
        window of recent events, as many as fit (at least one)."""
        recent = self._recent
        # Sequence numbers are consecutive, so "after seq" is a slice of the window.
        if recent and seq >= recent[0].seq - 1:
            return recent[seq - recent[0].seq + 1 :]
        return self._encoded.after(seq, max_bytes)

    async def follow(
        self, after: int, idle_timeout: float, push: Pusher | None = None
    ) -> AsyncGenerator[list[Event]]:
        position = after
        idle = _IdleTimer(idle_timeout)
        try:
            while True:
                batch = self.after(position, FOLLOW_BATCH_BYTES)
                if batch:
                    position = batch[-1].seq
                    idle.reset()
                    yield batch
                    if batch[-1].is_terminal:
                        return
                elif self._closed:
                    return  # the reader already has everything, terminal event included
                elif push is not None and position <= len(self._encoded):
                    # (Not for a reader that claims to be ahead of the log: every event
                    # pushed would be one it has already. It waits until the log passes it.)
                    pushing = await self._push_to(push, idle)
                    position = max(position, pushing.position)
                    if not push.wants_more:
                        await push.drain()
                    if pushing.ended:
                        return
                    if pushing.idle:
                        idle.reset()
                        yield []
                elif not await self._wait(idle):
                    idle.reset()
                    yield []
        finally:
            idle.stop()

    async def _push_to(self, push: Pusher, idle: _IdleTimer) -> _Pushing:
        """Hand each new event to `push` until it declines one, the log ends, or it is idle."""
        pushing = _Pushing(push, idle)
        self._pushers.append(pushing)
        idle.watch(pushing.woken)
        try:
            pushing.idle = not await pushing.woken
        finally:
            if pushing in self._pushers:
                self._pushers.remove(pushing)
        return pushing

    async def _wait(self, idle: _IdleTimer) -> bool:
        """Wait for the next append; False once the reader has been idle too long."""
        waiter: asyncio.Future[bool] = idle.loop.create_future()
        self._waiters.append(waiter)
        idle.watch(waiter)
        try:
            return await waiter
        finally:
            if not waiter.done() or waiter.cancelled() or waiter.result() is False:
                # Timed out or cancelled: still listed (an append empties the list).
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)


class _Pushing:
    """One reader being pushed to: where it stands, and how to wake its task."""

    __slots__ = ("_idle", "_push", "ended", "idle", "position", "woken")

    def __init__(self, push: Pusher, idle: _IdleTimer) -> None:
        self._push = push
        self._idle = idle
        self.woken: asyncio.Future[bool] = idle.loop.create_future()
        self.position = 0
        self.ended = False
        self.idle = False

    def offer(self, events: list[Event]) -> bool:
        """Push `events`; False when this reader stops being pushed to (its task is woken)."""
        if self.woken.done():
            return False
        if not self._push.push(events):
            self.woken.set_result(True)  # not taken: the reader reads them from the log
            return False
        event = events[-1]
        self.position = event.seq
        self._idle.reset()
        if event.is_terminal or not self._push.wants_more:
            self.ended = event.is_terminal
            self.woken.set_result(True)
            return False
        return True


class _IdleTimer:
    """Resolves a reader's waiter with False once it has had nothing for `timeout` seconds.

    One timer per idle period, not one per wait: while events flow, a wait
    only records its waiter, and the timer, when it fires early, re-arms
    itself for the rest of the period.
    """

    __slots__ = ("_handle", "_quiet_since", "_timeout", "_waiter", "loop")

    def __init__(self, timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._quiet_since = self.loop.time()
        self._handle: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[bool] | None = None

    def reset(self) -> None:
        self._quiet_since = self.loop.time()

    def watch(self, waiter: asyncio.Future[bool]) -> None:
        self._waiter = waiter
        if self._handle is None and self._timeout != math.inf:
            self._handle = self.loop.call_at(self._quiet_since + self._timeout, self._fire)

    def _fire(self) -> None:
        self._handle = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # the next wait arms the timer again
        due = self._quiet_since + self._timeout
        if self.loop.time() >= due:
            waiter.set_result(False)
        else:
            self._handle = self.loop.call_at(due, self._fire)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class _HeldBlock:
    """`MemoryEventLog.held()`: a plain object, not a generator per block (once per read)."""

    __slots__ = ("_depth", "_log")

    def __init__(self, log: MemoryEventLog) -> None:
        self._log = log
        self._depth = 0  # nested blocks: the outermost hands the events on

    def __enter__(self) -> None:
        if not self._depth:
            self._log._held = []
        self._depth += 1

    def __exit__(self, *exc_info: object) -> None:
        self._depth -= 1
        if not self._depth:
            self._log._hand_on_held()


class _EncodedEvents:
    """A run's events as JSON: one buffer, an offset and a type code per event."""

    __slots__ = ("_blob", "_offsets", "_types")

    def __init__(self) -> None:
        self._blob: bytes | bytearray = bytearray()
        self._offsets = array("I", [0])
        self._types = bytearray()

    def __len__(self) -> int:
        return len(self._types)

    @property
    def nbytes(self) -> int:
        offsets = self._offsets
        return len(self._blob) + len(offsets) * offsets.itemsize + len(self._types)

    def append(self, event: Event) -> None:
        encoded = event.encode_once()
        blob = self._blob
        assert isinstance(blob, bytearray), "append to frozen events"
        blob += encoded
        self._offsets.append(len(blob))
        self._types.append(_TYPE_CODES[event.type])

    def freeze(self) -> None:
        """No more events: keep the buffer at its exact size."""
        self._blob = bytes(self._blob)

    def after(self, seq: int, max_bytes: int | None = None) -> list[Event]:
        offsets, types = self._offsets, self._types
        start, end = max(seq, 0), len(types)
        if max_bytes is not None and start < end:
            # The events from `start` whose JSON fits in `max_bytes`, at least one.
            fits = bisect.bisect_right(offsets, offsets[start] + max_bytes, start, end + 1) - 1
            end = min(end, max(fits, start + 1))
        # A view, released before returning: a growing buffer cannot grow while viewed.
        with memoryview(self._blob) as blob:
            return [
                Event.from_json(
                    index + 1,
                    EVENT_TYPES[types[index]],
                    bytes(blob[offsets[index] : offsets[index + 1]]),
                )
                for index in range(start, end)
            ]


_TYPE_CODES = {name: code for code, name in enumerate(EVENT_TYPES)}
