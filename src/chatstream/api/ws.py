"""`WS /ws/chat`: the WebSocket protocol, an adapter over runs and their event logs.

Client frames (JSON text):

    {"type": "chat", "request_id": "...", ...chat request body...}
    {"type": "cancel", "message_id": "..."}
    {"type": "resume", "message_id": "...", "after": N}
    {"type": "ping"}
    {"type": "auth", "token": "..."}

(each may carry a `request_id`, echoed on the `error` or `pong` it causes;
see `api/ws_frames.py`)

Server frames: each run event (the objects of the SSE `data` lines) with
`request_id` (for runs started by `chat`), `message_id` and `seq` added;
`{"type": "pong"}`; and `{"type": "error", "code", "message", "retryable"}`
for a frame that could not be served, after which the socket stays open.

One socket runs several chats at once. A reader task takes frames as they
come (so `cancel` and `ping` are answered at once, mid-stream), and each run
the socket follows has its own task; all of them live in one task group,
which ends with the socket. Runs belong to the registry, not to the socket:
when the socket goes, its runs follow the disconnect policy.

A socket follows at most `CHATSTREAM_WS_MAX_RUNS` runs at once, chats and
resumes alike. A follow is registered the moment its frame is read, so a
second `resume` of the same run, however soon after, replaces the first
and starts where it stopped: no event is sent twice. A socket authenticated
with a JWT is closed (1008) when the token expires.

Who the caller is, and a refused upgrade: `api/ws_handshake.py`.

Bounds: a client that accepts nothing for `CHATSTREAM_SEND_TIMEOUT_S` is
dropped (1008 if a close frame can still be sent, else the connection is
reset: `api/ws_transport.py`), and its runs follow the disconnect policy; a
socket that sends no frame for `CHATSTREAM_WS_IDLE_TIMEOUT_S` while it
follows no run is closed (1000, "idle").
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import orjson
from fastapi import APIRouter, WebSocket
from pydantic import ValidationError

from chatstream.api.deps import State
from chatstream.api.errors import problem_details
from chatstream.api.follow import stream_lost
from chatstream.api.quota import quota_gate
from chatstream.api.sendwatch import SendWatch
from chatstream.api.ws_frames import (
    CancelFrame,
    ChatFrame,
    PingFrame,
    ResumeFrame,
    client_frame,
    event_frame,
    frame_code,
    frame_heads,
    origin_allowed,
    request_id_of,
    unnumbered_frame,
)
from chatstream.api.ws_handshake import authenticate, deny
from chatstream.api.ws_transport import close_or_abort
from chatstream.auth import Principal
from chatstream.errors import ChatstreamError
from chatstream.logs import log_fault
from chatstream.runs.handle import RunHandle

logger = logging.getLogger(__name__)

router = APIRouter()

CLOSE_NORMAL = 1000  # idle
CLOSE_TOO_BIG = 1009
CLOSE_POLICY = 1008  # auth failed or expired, or the client does not read what it asked for


# --- the endpoint --------------------------------------------------------------


@router.websocket("/ws/chat")
async def chat_socket(websocket: WebSocket, state: State) -> None:
    settings = state.settings
    if not origin_allowed(
        websocket.headers.get("origin"), websocket.headers.get("host"), settings.cors_origins
    ):
        await deny(websocket, 403, "forbidden", "This origin may not open a socket here.")
        return
    await websocket.accept()
    authenticated = await authenticate(websocket, state)
    if authenticated is None:
        await close_or_abort(websocket, CLOSE_POLICY, "authentication failed")
        return
    principal, expires_at = authenticated
    await ChatSocket(websocket, state, principal, expires_at).serve()


# --- one socket ------------------------------------------------------------------


@dataclass(slots=True)
class _Follow:
    """One run this socket sends: where it stands, and how to stop it."""

    request_id: str | None
    sent: int  # the last event seq handed to the socket
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    ended: anyio.Event = field(default_factory=anyio.Event)


class ChatSocket:
    def __init__(
        self, websocket: WebSocket, state: State, principal: Principal, expires_at: float | None
    ) -> None:
        self._websocket = websocket
        self._chat = quota_gate(state, websocket)  # the chat service, behind the token quota
        self._registry = state.registry
        self._settings = state.settings
        self._principal = principal
        self._owner = principal.owner
        self._expires_at = expires_at
        self._expired = False
        self._sender = SendWatch(websocket.send, state.settings.send_timeout_s)
        self._follows: dict[uuid.UUID, _Follow] = {}
        self._starting = 0  # chats between their frame and their run's follow
        self._tasks: anyio.abc.TaskGroup | None = None
        self._active_at = anyio.current_time()  # the last frame, or the end of the last follow
        self._idle = False

    @property
    def _busy(self) -> int:
        return len(self._follows) + self._starting

    async def serve(self) -> None:
        close_code: int | None = None
        reason = ""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            self._sender.bind(tasks.cancel_scope)
            tasks.start_soon(self._sender.watch)
            if self._expires_at is not None:
                tasks.start_soon(self._close_at_expiry, tasks.cancel_scope)
            tasks.start_soon(self._close_when_idle, tasks.cancel_scope)
            close_code = await self._read_frames()
            tasks.cancel_scope.cancel()
        if self._sender.stalled:
            closed = await close_or_abort(self._websocket, CLOSE_POLICY, "not reading")
            logger.info(
                "dropped a WebSocket whose client read nothing for %ss (%s)",
                self._settings.send_timeout_s,
                "closed" if closed else "connection reset",
            )
            return
        if self._expired:
            close_code, reason = CLOSE_POLICY, "token expired"
        elif self._idle:
            close_code, reason = CLOSE_NORMAL, "idle"
        if close_code is not None:
            await close_or_abort(self._websocket, close_code, reason)

    async def _close_at_expiry(self, scope: anyio.CancelScope) -> None:
        assert self._expires_at is not None
        await anyio.sleep(max(self._expires_at - time.time(), 0))
        self._expired = True
        scope.cancel()

    async def _close_when_idle(self, scope: anyio.CancelScope) -> None:
        """End the socket once it has sent nothing and followed nothing for the idle timeout."""
        timeout = self._settings.ws_idle_timeout_s
        while True:
            if self._busy:
                self._active_at = anyio.current_time()
            left = self._active_at + timeout - anyio.current_time()
            if left <= 0:
                self._idle = True
                scope.cancel()
                return
            await anyio.sleep(left)

    async def _read_frames(self) -> int | None:
        """Serve frames until the client leaves; return a close code to send, if any."""
        limit = self._settings.max_body_bytes
        while True:
            message = await self._websocket.receive()
            self._active_at = anyio.current_time()
            if message["type"] == "websocket.disconnect":
                return None
            text = message.get("text")
            if text is None:
                await self._error("invalid_request", "Frames are JSON text, not binary.")
                continue
            if len(text) > limit // 4 and len(text.encode()) > limit:
                return CLOSE_TOO_BIG
            await self._handle(text)

    async def _handle(self, text: str) -> None:
        try:
            frame = client_frame.validate_json(text)
        except ValidationError as exc:
            await self._error(
                "invalid_request",
                "The frame is not valid.",
                request_id=request_id_of(text),
                details=[
                    {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                    for e in exc.errors()
                ],
            )
            return
        if isinstance(frame, PingFrame):
            pong = {"type": "pong"}
            if frame.request_id is not None:
                pong["request_id"] = frame.request_id
            await self._send(orjson.dumps(pong).decode())
        elif isinstance(frame, ChatFrame):
            await self._start_chat(frame)
        elif isinstance(frame, CancelFrame):
            await self._cancel(frame)
        elif isinstance(frame, ResumeFrame):
            await self._resume(frame)
        # AuthFrame: accepted and ignored once authenticated.

    async def _too_busy(self, request_id: str | None) -> None:
        limit = self._settings.ws_max_runs
        await self._error(
            "too_many_runs",
            f"At most {limit} answers at once on one socket.",
            request_id=request_id,
            retryable=True,
            retry_after=1,
        )

    async def _start_chat(self, frame: ChatFrame) -> None:
        if self._busy >= self._settings.ws_max_runs:
            await self._too_busy(frame.request_id)
            return
        assert self._tasks is not None
        self._starting += 1
        self._tasks.start_soon(self._chat_and_follow, frame)

    async def _chat_and_follow(self, frame: ChatFrame) -> None:
        try:
            run = (await self._chat.start(self._principal, frame.to_input())).run
        except ChatstreamError as exc:
            self._starting -= 1
            await self._error(
                frame_code(exc),
                exc.message,
                request_id=frame.request_id,
                retryable=exc.retryable,
                retry_after=exc.retry_after,
                details=problem_details(exc, where=()),
            )
            return
        except Exception:
            # A bug or a broken dependency the service did not name: this chat
            # fails, the socket and its other runs go on (as a 500 would, over HTTP).
            self._starting -= 1
            log_fault(logger, "a WebSocket chat failed unexpectedly")
            await self._error("internal", "Internal error.", request_id=frame.request_id)
            return
        except BaseException:
            self._starting -= 1
            raise
        self._starting -= 1
        self._begin_follow(run, 0, frame.request_id)

    async def _cancel(self, frame: CancelFrame) -> None:
        run = await self._registry.get(frame.message_id, self._owner)
        if run is None:
            await self._error(
                "invalid_request",
                "No such run.",
                request_id=frame.request_id,
                message_id=frame.message_id,
            )
        elif not await run.cancel():
            await self._error(
                "invalid_request",
                "The run has already ended.",
                request_id=frame.request_id,
                message_id=frame.message_id,
            )

    async def _resume(self, frame: ResumeFrame) -> None:
        run = await self._registry.get(frame.message_id, self._owner)
        if run is None:
            await self._error(
                "invalid_request",
                "No such run.",
                request_id=frame.request_id,
                message_id=frame.message_id,
            )
        elif run.id not in self._follows and self._busy >= self._settings.ws_max_runs:
            await self._too_busy(frame.request_id)
        else:
            self._begin_follow(run, frame.after, None)

    def _begin_follow(self, run: RunHandle, after: int, request_id: str | None) -> None:
        """Follow `run` from `after`, replacing this socket's follow of it, if any.

        Registered before the next frame is read; the new follow starts once
        the one it replaces has stopped, and never before the last event that
        one sent.
        """
        assert self._tasks is not None
        previous = self._follows.get(run.id)
        if previous is not None:
            previous.scope.cancel()
            request_id = request_id or previous.request_id
        follow = _Follow(request_id=request_id, sent=after)
        self._follows[run.id] = follow
        self._tasks.start_soon(self._follow, run, follow, previous)

    async def _follow(self, run: RunHandle, follow: _Follow, previous: _Follow | None) -> None:
        """Send the run's events as frames, until `done`."""
        with follow.scope:
            try:
                if previous is not None:
                    await previous.ended.wait()
                    follow.sent = max(follow.sent, previous.sent)
                heads = frame_heads(run.id, follow.request_id)
                send = self._send
                try:
                    async with run.follow(follow.sent) as batches:
                        async for batch in batches:
                            for event in batch:
                                # Counted as sent once handed over: the socket's
                                # write happens before the send can be cancelled.
                                follow.sent = event.seq
                                await send(event_frame(heads, event))
                except ChatstreamError as exc:
                    # This run's stream was lost (Redis away): its `error` and `done`,
                    # for this run only, as every protocol ends it (api/follow.py);
                    # the client resumes it after `follow.sent`.
                    for payload in stream_lost(run.id, exc):
                        await send(unnumbered_frame(run.id, follow.request_id, payload))
            finally:
                follow.ended.set()
                if self._follows.get(run.id) is follow:
                    del self._follows[run.id]
                self._active_at = anyio.current_time()

    async def _error(
        self,
        code: str,
        message: str,
        *,
        request_id: str | None = None,
        message_id: uuid.UUID | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        details: Any = None,
    ) -> None:
        frame: dict[str, Any] = {
            "type": "error",
            "code": code,
            "message": message,
            "retryable": retryable,
        }
        if request_id is not None:
            frame["request_id"] = request_id
        if message_id is not None:
            frame["message_id"] = str(message_id)
        if retry_after is not None:
            frame["retry_after"] = retry_after
        if details is not None:
            frame["details"] = details
        await self._send(orjson.dumps(frame).decode())

    async def _send(self, text: str) -> None:
        await self._sender.send({"type": "websocket.send", "text": text})
