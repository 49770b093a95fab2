"""A run's event log on the instance generating it, when runs are shared through Redis.

Its readers on this instance are sent an event only once Redis has it
(`RunMirror` publishes each pipeline's events): Redis' copy is the run's
record (see the class below, and fleet/redis_takeover.py).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from chatstream.runs.events import Event, EventPayload
from chatstream.runs.log import MemoryEventLog

if TYPE_CHECKING:
    from chatstream.fleet.redis_mirror import RunMirror


class MirroredEventLog(MemoryEventLog):
    """A run's log in memory, whose readers see an event once Redis has it.

    Redis' copy is the run's record: if this process dies, another instance
    ends the run from it (fleet/redis_takeover.py), so no follower may have
    seen more than it holds, and every id the taker adds is above every id
    sent. The run appends without waiting (its events are `staged`); the
    mirror writes them in its next pipeline and then `publish`es them to
    this process' readers. While Redis is unreachable the log is published
    at once (`staging` off): followers keep streaming, at the price of what
    section "Nothing lost" of the README says.
    """

    __slots__ = (
        "_mirror",
        "_staged",
        "adopted",
        "mirrored",
        "owner",
        "refused",
        "run_id",
        "session_id",
        "staging",
        "taken_over",
    )

    def __init__(
        self, mirror: RunMirror, run_id: uuid.UUID, owner: str, session_id: uuid.UUID
    ) -> None:
        super().__init__()
        self._mirror = mirror
        self.run_id = run_id
        self.owner = owner
        self.session_id = session_id
        self.mirrored = 0  # the last seq Redis has
        self.staging = mirror.reachable
        self.taken_over = False  # another instance ended the run: Redis takes nothing more
        self.refused = False  # Redis refused its events: it goes on here alone
        self.adopted = False  # readers here have the end that instance wrote
        self._staged: list[Event] = []  # appended, not yet in Redis nor readable here

    @property
    def last_seq(self) -> int:
        staged = self._staged
        return staged[-1].seq if staged else super().last_seq

    @property
    def closed(self) -> bool:
        """Whether the run has appended its terminal event (readers may not have it yet)."""
        staged = self._staged
        return staged[-1].is_terminal if staged else super().closed

    @property
    def superseded(self) -> bool:
        return self.taken_over

    def append(self, payload: EventPayload) -> Event:
        if self.adopted:
            # The run's end, as this (stale) process has it, after the taker's: never sent.
            return Event(self.last_seq + 1, payload)
        if not self.staging:
            event = super().append(payload)
        else:
            if self.closed:
                raise RuntimeError("append to a closed event log")
            event = Event(self.last_seq + 1, payload)
            event.encode_once()  # here, not in the mirror's pipeline for every run at once
            self._staged.append(event)
        if self.refused:
            if event.is_terminal:
                self._mirror.forget(self)  # its lease may lapse now: it is saved
        elif not self.taken_over:
            self._mirror.changed(self)
        return event

    def unmirrored(self) -> list[Event]:
        """The events Redis does not have yet, readable or staged, in order."""
        published = super().after(self.mirrored) if self.mirrored < super().last_seq else []
        staged = self._staged
        if staged and staged[0].seq <= self.mirrored:
            staged = [event for event in staged if event.seq > self.mirrored]
        return published + staged

    def publish(self, upto: int) -> None:
        """Let this process' readers have the staged events up to `upto`, together."""
        staged = self._staged
        if not staged or staged[0].seq > upto:
            return
        count = upto - staged[0].seq + 1
        ready, self._staged = staged[:count], staged[count:]
        with self.held():
            for event in ready:
                self._add(event)

    def publish_all(self, *, staging: bool) -> None:
        """Readable now, whatever Redis has; `staging` says whether later events wait for it."""
        self.publish(self.last_seq)
        self.staging = staging

    def adopt(self, events: list[Event]) -> bool:
        """The run's end as the instance that took it over wrote it: readers get that
        instead of what this process staged. False if it is not there yet."""
        published = super().last_seq
        if super().closed:
            return True
        if not events or not events[-1].is_terminal:
            return False
        ending = [event for event in events if event.seq > published]
        if not ending:
            # (Only after an outage, when readers here had more than Redis: the end,
            # numbered after what they have.)
            last = events[-1]
            ending = [Event.from_json(published + 1, last.type, last.json)]
        self._staged = []
        self.adopted = True
        with self.held():
            for event in ending:
                self._add(event)
        return True
