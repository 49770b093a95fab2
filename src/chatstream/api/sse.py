"""Serve a run's event log as Server-Sent Events.

Why not FastAPI's generator-based `fastapi.sse` path: the contract's
keepalive is `: keepalive` and FastAPI's is a fixed `: ping`; there every
event becomes a pydantic `ServerSentEvent` and crosses two memory streams
and a task switch, per token; and each event is its own write, where this
writer sends everything that is ready in one. FastAPI sends any route whose
`response_class` is an `EventSourceResponse` down that path, so this is a
plain `Response` with the `text/event-stream` media type; the OpenAPI entry
(`itemSchema` per event) follows the shape `fastapi.sse` documents.

The response follows the run; it does not own it. When the client leaves,
or stops reading for `CHATSTREAM_SEND_TIMEOUT_S`, the response stops
following and the run goes on (or is cancelled, if that is the disconnect
policy and nobody else follows it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import anyio
import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from chatstream.api.follow import stream_lost
from chatstream.api.sendwatch import SendWatch
from chatstream.errors import ChatstreamError
from chatstream.runs.events import Event, EventPayload
from chatstream.runs.handle import RunHandle

logger = logging.getLogger(__name__)

KEEPALIVE = b": keepalive\n\n"
SERVER_SEND = "chatstream.server_send"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def encode_events(batch: list[Event]) -> bytes:
    if not batch:
        return KEEPALIVE
    return b"".join(
        [b"id: %d\nevent: %s\ndata: %s\n\n" % (e.seq, e.type.encode(), e.json) for e in batch]
    )


def encode_unnumbered(payloads: Iterable[EventPayload]) -> bytes:
    """Events that are not the run's: no `id`, so `Last-Event-ID` stays the last event's."""
    return b"".join(
        [b"event: %s\ndata: %s\n\n" % (p["type"].encode(), orjson.dumps(p)) for p in payloads]
    )


class RunEventStream(Response):
    media_type = "text/event-stream"

    def __init__(
        self,
        run: RunHandle,
        *,
        after: int,
        keepalive_s: float,
        send_timeout_s: float,
        headers: dict[str, str] | None = None,
    ) -> None:
        # Response.__init__ wants a body; this response writes its own, as it goes.
        self.status_code = 200
        self.background = None
        self.init_headers({**SSE_HEADERS, **(headers or {})})
        self._run = run
        self._after = after
        self._keepalive_s = keepalive_s
        self._send_timeout_s = send_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        # Events go straight to the server's own send: every middleware between
        # (request id, metrics, error handling) only looks at the response's start
        # and end, which still pass through them, and a call through each of them
        # per token is most of the cost of sending one.
        server_send = scope.get(SERVER_SEND, send)
        watch = SendWatch(server_send, self._send_timeout_s)
        eager = EagerSend(server_send, watch)
        async with anyio.create_task_group() as tasks:
            watch.bind(tasks.cancel_scope)
            tasks.start_soon(_stop_on_disconnect, receive, tasks.cancel_scope)
            tasks.start_soon(watch.watch)
            try:
                async with self._run.follow(self._after, self._keepalive_s, eager) as batches:
                    async for batch in batches:
                        body = encode_events(batch)
                        await watch.send(
                            {"type": "http.response.body", "body": body, "more_body": True}
                        )
            except ChatstreamError as exc:
                # The run's stream was lost (another instance's, Redis away): say so
                # and end, as every protocol does (api/follow.py); the client
                # resumes after the last id it has.
                logger.info("event stream of run %s ended early: %s", self._run.id, exc.code)
                lost = encode_unnumbered(stream_lost(self._run.id, exc))
                await watch.send({"type": "http.response.body", "body": lost, "more_body": True})
            # The end goes through the middlewares, bounded like every send.
            with anyio.move_on_after(self._send_timeout_s):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            tasks.cancel_scope.cancel()
        if watch.stalled:
            logger.info("dropped an event stream whose client stopped reading")


class EagerSend:
    """Writes an event to the client the moment the run appends it (`runs.log.Pusher`).

    For a client that has caught up, the server's send is run right there,
    inside the append: uvicorn writes to the socket without waiting unless the
    client's buffers are full, so the event leaves with no task switch and no
    wake-up of the response's task. If the send does have to wait, it is
    handed to the response's task (`drain`), watched like any other send,
    and events go back to being read from the log until it is done.
    """

    __slots__ = ("_encode", "_pending", "_send", "_watch")

    def __init__(
        self,
        send: Send,
        watch: SendWatch,
        encode: Callable[[list[Event]], bytes] = encode_events,
    ) -> None:
        self._send = send
        self._watch = watch
        self._encode = encode  # another protocol's translation (api/translated_stream.py)
        self._pending: tuple[Coroutine[Any, Any, None], Any] | None = None

    @property
    def wants_more(self) -> bool:
        return self._pending is None

    def push(self, events: list[Event]) -> bool:
        if self._pending is not None:
            return False
        body = self._encode(events)
        if not body:
            return True  # (a translation with nothing to say for these events)
        sending = self._send({"type": "http.response.body", "body": body, "more_body": True})
        try:
            waiting_on = sending.send(None)  # type: ignore[attr-defined]
        except StopIteration:
            return True
        except Exception:
            # The client is gone: the response's task finds out with its next send.
            return False
        self._pending = (sending, waiting_on)  # type: ignore[assignment]
        return True

    async def drain(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            await self._watch.drive(*pending)


async def _stop_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
