"""Serve a session's events (`runs/session_events.py`) as Server-Sent Events.

    event: run.started
    data: {"type":"run.started","session_id":"…","message_id":"…"}

The watcher subscribes before it asks which run is live, so nothing falls
between the two; a run announced on connect is not announced again when its
own `run.started` arrives. A watcher that stops reading is dropped after
`CHATSTREAM_SEND_TIMEOUT_S` (as a run's stream is), and one that falls
`QUEUE_LIMIT` events behind is ended: it reconnects and starts afresh.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from chatstream.api.sendwatch import SendWatch
from chatstream.api.sse import KEEPALIVE, SSE_HEADERS
from chatstream.errors import ChatstreamError
from chatstream.runs.session_events import (
    SessionEvents,
    SessionUpdatedEvent,
    Subscription,
    run_started_event,
)

logger = logging.getLogger(__name__)

LiveNow = Callable[[], Awaitable[uuid.UUID | None]]
SessionNow = Callable[[], Awaitable[SessionUpdatedEvent | None]]


def _shown(session: SessionUpdatedEvent) -> tuple[str | None, ...]:
    """What a watcher sees of a session, and is told again when it changes."""
    return session["title"], session["model"], session["system_prompt"]


def encode_session_events(events: list[dict[str, Any]]) -> bytes:
    return b"".join(
        b"event: %s\ndata: %s\n\n" % (str(event["type"]).encode(), orjson.dumps(event))
        for event in events
    )


class SessionEventStream(Response):
    media_type = "text/event-stream"

    def __init__(
        self,
        events: SessionEvents,
        session_id: uuid.UUID,
        live_now: LiveNow,
        session: SessionUpdatedEvent,
        session_now: SessionNow,
        *,
        keepalive_s: float,
        send_timeout_s: float,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers(dict(SSE_HEADERS))
        self._events = events
        self._session_id = session_id
        self._live_now = live_now
        self._session = session
        self._session_now = session_now
        self._keepalive_s = keepalive_s
        self._send_timeout_s = send_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        watch = SendWatch(send, self._send_timeout_s)
        async with anyio.create_task_group() as tasks:
            watch.bind(tasks.cancel_scope)
            tasks.start_soon(_stop_on_disconnect, receive, tasks.cancel_scope)
            tasks.start_soon(watch.watch)
            with self._events.subscribe(self._session_id) as subscription:
                await self._serve(subscription, watch)
            with anyio.move_on_after(self._send_timeout_s):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            tasks.cancel_scope.cancel()
        if watch.stalled:
            logger.info("dropped a session event stream whose client stopped reading")

    async def _serve(self, subscription: Subscription, watch: SendWatch) -> None:
        announced: set[str] = set()
        try:
            live = await self._live_now()
        except ChatstreamError as exc:
            live = None  # Redis away: the runs' own events still come
            logger.info("session event stream began without the live run: %s", exc.code)
        if live is not None:
            announced.add(str(live))
            first = encode_session_events([dict(run_started_event(self._session_id, live))])
            await watch.send({"type": "http.response.body", "body": first, "more_body": True})
        while True:
            batch = await subscription.next(self._keepalive_s)
            if subscription.dropped:
                return
            deleted = run_ended = False
            out: list[dict[str, Any]] = []
            for event in batch:
                kind, message_id = event.get("type"), str(event.get("message_id"))
                if kind == "run.started":
                    if message_id in announced:
                        continue
                    announced.add(message_id)
                elif kind == "run.ended":
                    announced.discard(message_id)
                    run_ended = True
                elif kind == "session.updated":
                    self._session = event  # type: ignore[assignment]
                out.append(event)
                if kind == "session.deleted":
                    deleted = True
                    break
            if run_ended and not deleted:
                out += await self._changed()
            if batch and not out:
                continue  # only repeats: nothing new to say, and not idle either
            body = encode_session_events(out) if out else KEEPALIVE
            await watch.send({"type": "http.response.body", "body": body, "more_body": True})
            if deleted:
                return

    async def _changed(self) -> list[dict[str, Any]]:
        """`session.updated`, if a run changed the session (its title, from its first message)."""
        try:
            now = await self._session_now()
        except ChatstreamError:
            return []  # the database is away: the next run's end looks again
        if now is None or _shown(now) == _shown(self._session):
            return []
        self._session = now
        return [dict(now)]


async def _stop_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
