"""Serve a run's events in another client protocol's event stream.

The AI SDK's UI message stream and the OpenAI facade's chunk stream are
both Server-Sent Events of `data: <JSON>` lines that end with
`data: [DONE]`. Each protocol is a `Translation`: a small per-response
object that turns batches of the run's events into those bytes, knowing
nothing of HTTP. This response does the rest, exactly as `RunEventStream`
does for chatstream's own SSE: it follows the run (the same `follow()`
batches), sends whatever is ready in one write, keeps an idle stream alive
with a comment line, and drops a client that stops reading. When the run's
stream is lost (another instance's run, Redis away longer than a lease),
the translation is handed an `error` and an `interrupted` end, so the
client's own library reports a failure and the stream still ends with
its `closing`: `[DONE]` (the AI SDK's resume endpoint starts the run's
stream again). A protocol whose events are numbered and resumable (the
Responses API's `starting_after`) ends it its own way (`NumberedTranslation`):
its end must use up no number the run's own events will have.

The response follows the run; it does not own it. When the client leaves,
the run goes on, unless the response was told to cancel it then (the AI
SDK's default: a client disconnect is a stop).
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from chatstream.api.follow import stream_lost
from chatstream.api.sendwatch import SendWatch
from chatstream.api.sse import KEEPALIVE, SERVER_SEND, SSE_HEADERS, EagerSend
from chatstream.errors import ChatstreamError
from chatstream.runs.events import ErrorEvent, Event
from chatstream.runs.handle import RunHandle

logger = logging.getLogger(__name__)

DONE_LINE = b"data: [DONE]\n\n"


class Translation(Protocol):
    def encode(self, batch: list[Event]) -> bytes:
        """The bytes for these events (possibly none); called with every batch, in order."""
        ...


@runtime_checkable
class NumberedTranslation(Translation, Protocol):
    def lost(self, error: ErrorEvent) -> bytes:
        """The end of a follow whose run's stream was lost here, numbered as nothing new."""
        ...


class TranslatedStream(Response):
    media_type = "text/event-stream"

    def __init__(
        self,
        run: RunHandle,
        translation: Translation,
        *,
        keepalive_s: float,
        send_timeout_s: float,
        headers: dict[str, str] | None = None,
        cancel_on_disconnect: bool = False,
        closing: bytes = DONE_LINE,
    ) -> None:
        # Response.__init__ wants a body; this response writes its own, as it goes.
        self.status_code = 200
        self.background = None
        self.init_headers({**SSE_HEADERS, **(headers or {})})
        self._run = run
        self._translation = translation
        self._keepalive_s = keepalive_s
        self._send_timeout_s = send_timeout_s
        self._cancel_on_disconnect = cancel_on_disconnect
        self._closing = closing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        # As `RunEventStream` does: events go straight to the server's own send (the
        # middlewares see the response's start and end), and a client that keeps up
        # is written to inside the append itself (`EagerSend`), with no task switch.
        server_send = scope.get(SERVER_SEND, send)
        watch = SendWatch(server_send, self._send_timeout_s)
        translate = self._translation.encode
        last_seq = 0

        def encode(batch: list[Event]) -> bytes:
            nonlocal last_seq
            last_seq = batch[-1].seq
            return translate(batch)

        eager = EagerSend(server_send, watch, encode)
        followed_to_the_end = False
        async with anyio.create_task_group() as tasks:
            watch.bind(tasks.cancel_scope)
            tasks.start_soon(_stop_on_disconnect, receive, tasks.cancel_scope)
            tasks.start_soon(watch.watch)
            try:
                async with self._run.follow(0, self._keepalive_s, eager) as batches:
                    async for batch in batches:
                        body = encode(batch) if batch else KEEPALIVE
                        if body:
                            await watch.send(
                                {"type": "http.response.body", "body": body, "more_body": True}
                            )
            except ChatstreamError as exc:
                logger.info("event stream of run %s ended early: %s", self._run.id, exc.code)
                error, done = stream_lost(self._run.id, exc)
                if isinstance(self._translation, NumberedTranslation):
                    lost = self._translation.lost(error)
                else:
                    lost = translate([Event(last_seq + 1, error), Event(last_seq + 2, done)])
                await watch.send({"type": "http.response.body", "body": lost, "more_body": True})
            followed_to_the_end = True
            if self._closing:
                await watch.send(
                    {"type": "http.response.body", "body": self._closing, "more_body": True}
                )
            # The end goes through the middlewares, bounded like every send.
            with anyio.move_on_after(self._send_timeout_s):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            tasks.cancel_scope.cancel()
        if watch.stalled:
            logger.info("dropped an event stream whose client stopped reading")
        if not followed_to_the_end and self._cancel_on_disconnect:
            with anyio.CancelScope(shield=True):
                cancelled = await self._run.cancel()
            if cancelled:
                logger.info("run %s cancelled: its client disconnected", self._run.id)


async def _stop_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
