"""A session's events, for every tab and device that watches it (`GET /api/sessions/{id}/events`).

    registry ── run_started / run_finished ──▶ SessionEvents ──▶ each subscriber's queue
    PATCH, DELETE, the auto-title ──── publish ──▶   │
                                                     └──▶ relay (Redis pub/sub, to the other
                                                          instances; they deliver it locally)

Events are small JSON objects whose `type` is `run.started`, `run.ended`,
`session.updated` or `session.deleted`. They carry no sequence number: a
watcher that reconnects is told the session's live run again (`run.started`)
and reads the rest of the session's state from the API.

Publishing never waits and never grows without bound: each subscriber has a
queue of `QUEUE_LIMIT` events, and one that falls that far behind is dropped
(its stream ends; its client reconnects and starts from the current state),
so a stuck watcher costs neither memory nor time to the runs or anyone else.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Literal, Protocol

import anyio
from pydantic import TypeAdapter
from typing_extensions import TypedDict

from chatstream.runs.events import MessageStatus
from chatstream.runs.lifecycle import RunRecord, RunStarted

logger = logging.getLogger(__name__)

QUEUE_LIMIT = 64


class RunStartedEvent(TypedDict):
    type: Literal["run.started"]
    session_id: str
    message_id: str  # follow it with GET /api/runs/{message_id}/events


class RunEndedEvent(TypedDict):
    type: Literal["run.ended"]
    session_id: str
    message_id: str
    status: MessageStatus  # complete | cancelled | error | interrupted


class SessionUpdatedEvent(TypedDict):
    type: Literal["session.updated"]
    session_id: str
    title: str | None
    model: str | None
    system_prompt: str | None
    updated_at: str


class SessionDeletedEvent(TypedDict):
    type: Literal["session.deleted"]
    session_id: str


class SessionFields(Protocol):
    """What `session.updated` says of a session (a stored row, or the API's `SessionOut`)."""

    @property
    def title(self) -> str | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def system_prompt(self) -> str | None: ...
    @property
    def updated_at(self) -> datetime: ...


# Times as the API writes them everywhere else (pydantic's JSON form).
_TIME: TypeAdapter[datetime] = TypeAdapter(datetime)


def session_updated_event(session_id: uuid.UUID, session: SessionFields) -> SessionUpdatedEvent:
    return {
        "type": "session.updated",
        "session_id": str(session_id),
        "title": session.title,
        "model": session.model,
        "system_prompt": session.system_prompt,
        "updated_at": _TIME.dump_python(session.updated_at, mode="json"),
    }


SessionEventPayload = RunStartedEvent | RunEndedEvent | SessionUpdatedEvent | SessionDeletedEvent


class Subscription:
    """One watcher's queue of one session's events."""

    __slots__ = ("_items", "_limit", "_wake", "dropped", "session_id")

    def __init__(self, session_id: uuid.UUID, limit: int) -> None:
        self.session_id = session_id
        self._items: deque[dict[str, Any]] = deque()
        self._limit = limit
        self._wake = anyio.Event()
        self.dropped = False  # fell `limit` events behind, or the server stops: its stream ends

    def put(self, event: dict[str, Any]) -> None:
        if self.dropped:
            return
        if len(self._items) >= self._limit:
            self.dropped = True
            self._items.clear()
        else:
            self._items.append(event)
        self._wake.set()

    def close(self) -> None:
        self.dropped = True
        self._items.clear()
        self._wake.set()

    async def next(self, timeout_s: float) -> list[dict[str, Any]]:
        """What came since the last call, waiting up to `timeout_s` for something ([]: nothing)."""
        if not self._items and not self.dropped:
            with anyio.move_on_after(timeout_s):
                await self._wake.wait()
        self._wake = anyio.Event()
        batch = list(self._items)
        self._items.clear()
        return batch


Relay = Callable[[uuid.UUID, dict[str, Any]], None]


class SessionEvents:
    """The in-process hub, and a `RunListener` that tells it about runs starting and ending."""

    def __init__(self, queue_limit: int = QUEUE_LIMIT) -> None:
        self._subscribers: dict[uuid.UUID, set[Subscription]] = {}
        self._queue_limit = queue_limit
        self._closed = False
        # Set while another instance must hear too (`fleet/redis_sessions.py`).
        self.relay: Relay | None = None
        # Told when a run ended here (the local gate frees its session).
        self.on_run_end: Callable[[uuid.UUID, uuid.UUID], None] | None = None

    @contextmanager
    def subscribe(self, session_id: uuid.UUID) -> Iterator[Subscription]:
        subscription = Subscription(session_id, self._queue_limit)
        if self._closed:
            subscription.close()
        self._subscribers.setdefault(session_id, set()).add(subscription)
        try:
            yield subscription
        finally:
            watchers = self._subscribers.get(session_id)
            if watchers is not None:
                watchers.discard(subscription)
                if not watchers:
                    del self._subscribers[session_id]

    def close(self) -> None:
        """End every watcher's stream (the server is shutting down); new ones end at once."""
        self._closed = True
        for watchers in self._subscribers.values():
            for subscription in watchers:
                subscription.close()

    @property
    def subscriber_count(self) -> int:
        return sum(len(watchers) for watchers in self._subscribers.values())

    def deliver(self, session_id: uuid.UUID, event: dict[str, Any]) -> None:
        """To this instance's watchers of the session only (what the relay hands in)."""
        for subscription in list(self._subscribers.get(session_id, ())):
            subscription.put(event)
            if subscription.dropped:
                logger.info("dropped a session event stream that fell behind")

    def publish(self, session_id: uuid.UUID, event: SessionEventPayload) -> None:
        """To every watcher of the session, on every instance. Never waits."""
        payload: dict[str, Any] = dict(event)
        self.deliver(session_id, payload)
        if self.relay is not None:
            self.relay(session_id, payload)

    def session_updated(self, session_id: uuid.UUID, session: SessionFields) -> None:
        self.publish(session_id, session_updated_event(session_id, session))

    # --- RunListener ---------------------------------------------------------------

    def run_started(self, run: RunStarted) -> None:
        self.publish(
            run.session_id,
            {
                "type": "run.started",
                "session_id": str(run.session_id),
                "message_id": str(run.message_id),
            },
        )

    def run_finished(self, record: RunRecord) -> None:
        if self.on_run_end is not None:
            self.on_run_end(record.session_id, record.message_id)
        self.publish(
            record.session_id,
            {
                "type": "run.ended",
                "session_id": str(record.session_id),
                "message_id": str(record.message_id),
                "status": record.status,
            },
        )

    def chat_rejected(self, code: str) -> None:
        pass


def run_started_event(session_id: uuid.UUID, message_id: uuid.UUID) -> RunStartedEvent:
    """`run.started` for a run already live when a watcher connects."""
    return {"type": "run.started", "session_id": str(session_id), "message_id": str(message_id)}
