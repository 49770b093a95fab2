"""`WS /ws/chat`: the WebSocket protocol, an adapter over runs and their event logs.

Client frames (JSON text):

    {"type": "chat", "request_id": "...", ...chat request body...}
    {"type": "cancel", "message_id": "..."}
    {"type": "resume", "message_id": "...", "after": N}
    {"type": "ping"}
    {"type": "auth", "token": "..."}

Server frames: each run event (the objects of the SSE `data` lines) with
`request_id` (for runs started by `chat`), `message_id` and `seq` added;
`{"type": "pong"}`; and `{"type": "error", "code", "message", "retryable"}`
for a frame that could not be served, after which the socket stays open.

One socket runs several chats at once. A reader task takes frames as they
come (so `cancel` and `ping` are answered at once, mid-stream), and each run
the socket follows has its own task; all of them live in one task group,
which ends with the socket. Runs belong to the registry, not to the socket:
when the socket goes, its runs follow the disconnect policy.
"""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import anyio
import anyio.abc
import orjson
from fastapi import APIRouter, WebSocket
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.responses import JSONResponse

from chatstream.api.deps import State, principal_of
from chatstream.api.sendwatch import SendWatch
from chatstream.auth import Principal
from chatstream.errors import (
    ChatstreamError,
    DatabaseUnavailable,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServerShutdown,
    ServiceUnavailable,
    Unauthorized,
)
from chatstream.runs.events import Event
from chatstream.runs.handle import RunHandle
from chatstream.runs.service import ChatRequest

logger = logging.getLogger(__name__)

router = APIRouter()

CLOSE_TOO_BIG = 1009
CLOSE_POLICY = 1008  # auth failed, or the client does not read what it asked for
CLOSE_TIMEOUT_S = 1.0


# --- client frames -------------------------------------------------------------


class ChatFrame(ChatRequest):
    type: Literal["chat"]
    request_id: Annotated[str, Field(min_length=1, max_length=200)]


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CancelFrame(_Frame):
    type: Literal["cancel"]
    message_id: uuid.UUID


class ResumeFrame(_Frame):
    type: Literal["resume"]
    message_id: uuid.UUID
    after: Annotated[int, Field(ge=0)] = 0


class PingFrame(_Frame):
    type: Literal["ping"]


class AuthFrame(_Frame):
    type: Literal["auth"]
    token: Annotated[str, Field(min_length=1, max_length=8192)]


ClientFrame = Annotated[
    ChatFrame | CancelFrame | ResumeFrame | PingFrame | AuthFrame, Field(discriminator="type")
]
_client_frame: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)


# --- the endpoint --------------------------------------------------------------


@router.websocket("/ws/chat")
async def chat_socket(websocket: WebSocket, state: State) -> None:
    settings = state.settings
    if not origin_allowed(
        websocket.headers.get("origin"), websocket.headers.get("host"), settings.cors_origins
    ):
        await _deny(websocket, 403, "forbidden", "This origin may not open a socket here.")
        return
    await websocket.accept()
    principal = await _authenticate(websocket, state)
    if principal is None:
        with anyio.move_on_after(CLOSE_TIMEOUT_S):
            await websocket.close(code=CLOSE_POLICY, reason="authentication failed")
        return
    await ChatSocket(websocket, state, principal).serve()


async def _authenticate(websocket: WebSocket, state: State) -> Principal | None:
    """The caller, from the `Authorization` header or a first `auth` frame; None if neither holds.

    Never from the URL: URLs end up in logs.
    """
    header = websocket.headers.get("authorization")
    try:
        if not state.authenticator.enabled or header is not None:
            return principal_of(state, websocket, header)
        with anyio.fail_after(state.settings.ws_auth_timeout_s):
            message = await websocket.receive()
        text = message.get("text") if message["type"] == "websocket.receive" else None
        if text is None:
            return None
        frame = _client_frame.validate_json(text)
        if not isinstance(frame, AuthFrame):
            return None
        owner = state.authenticator.owner_from_token(frame.token)
    except (Unauthorized, ValidationError, TimeoutError):
        return None
    return Principal(owner=owner, limit_key=f"owner:{owner}")


async def _deny(websocket: WebSocket, status: int, code: str, message: str) -> None:
    """Refuse the upgrade with an HTTP status (and a JSON body, when the server can send one)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        body = JSONResponse({"error": {"code": code, "message": message}}, status_code=status)
        await websocket.send_denial_response(body)
    else:
        await websocket.close(code=1008)


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """Same origin (host and port of `Origin` equal those of `Host`), or listed in CORS origins."""
    if origin is None:
        return True  # not a browser: nothing to protect against
    if origin in allowed or "*" in allowed:
        return True
    if host is None:
        return False
    parts = urlsplit(origin)
    default = {"http": 80, "ws": 80, "https": 443, "wss": 443}.get(parts.scheme)
    try:
        origin_port = parts.port or default
        host_parts = urlsplit(f"//{host}")
        host_port = host_parts.port or default
    except ValueError:
        return False
    return (parts.hostname, origin_port) == (host_parts.hostname, host_port)


# --- one socket ------------------------------------------------------------------


class ChatSocket:
    def __init__(self, websocket: WebSocket, state: State, principal: Principal) -> None:
        self._websocket = websocket
        self._chat = state.chat
        self._registry = state.registry
        self._settings = state.settings
        self._principal = principal
        self._owner = principal.owner
        self._sender = SendWatch(websocket.send, state.settings.send_timeout_s)
        self._following: dict[uuid.UUID, anyio.CancelScope] = {}
        self._chats = 0
        self._tasks: anyio.abc.TaskGroup | None = None

    async def serve(self) -> None:
        close_code: int | None = None
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            self._sender.bind(tasks.cancel_scope)
            tasks.start_soon(self._sender.watch)
            close_code = await self._read_frames()
            tasks.cancel_scope.cancel()
        if self._sender.stalled:
            logger.info("closing a WebSocket that stopped reading")
            close_code = CLOSE_POLICY
        if close_code is not None:
            # A client that stopped reading cannot take the close frame either.
            with anyio.move_on_after(CLOSE_TIMEOUT_S):
                await self._websocket.close(code=close_code)

    async def _read_frames(self) -> int | None:
        """Serve frames until the client leaves; return a close code to send, if any."""
        limit = self._settings.max_body_bytes
        while True:
            message = await self._websocket.receive()
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
            frame = _client_frame.validate_json(text)
        except ValidationError as exc:
            await self._error(
                "invalid_request",
                "The frame is not valid.",
                request_id=_request_id_of(text),
                details=[
                    {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                    for e in exc.errors()
                ],
            )
            return
        if isinstance(frame, PingFrame):
            await self._send('{"type":"pong"}')
        elif isinstance(frame, ChatFrame):
            await self._start_chat(frame)
        elif isinstance(frame, CancelFrame):
            await self._cancel(frame)
        elif isinstance(frame, ResumeFrame):
            await self._resume(frame)
        # AuthFrame: accepted and ignored while auth is off.

    async def _start_chat(self, frame: ChatFrame) -> None:
        if self._chats >= self._settings.ws_max_runs:
            await self._error(
                "too_many_runs",
                f"At most {self._settings.ws_max_runs} answers at once on one socket.",
                request_id=frame.request_id,
                retryable=True,
                retry_after=1,
            )
            return
        assert self._tasks is not None
        self._chats += 1
        self._tasks.start_soon(self._chat_and_follow, frame)

    async def _chat_and_follow(self, frame: ChatFrame) -> None:
        try:
            try:
                run = (await self._chat.start(self._principal, frame)).run
            except ChatstreamError as exc:
                await self._error(
                    _frame_code(exc),
                    exc.message,
                    request_id=frame.request_id,
                    retryable=exc.retryable,
                    retry_after=exc.retry_after,
                    details=exc.details,
                )
                return
            await self._follow(run, after=0, request_id=frame.request_id)
        finally:
            self._chats -= 1

    async def _cancel(self, frame: CancelFrame) -> None:
        run = self._registry.get(frame.message_id, self._owner)
        if run is None:
            await self._error("invalid_request", "No such run.", message_id=frame.message_id)
        elif not run.cancel():
            await self._error(
                "invalid_request", "The run has already ended.", message_id=frame.message_id
            )

    async def _resume(self, frame: ResumeFrame) -> None:
        run = self._registry.get(frame.message_id, self._owner)
        if run is None:
            await self._error("invalid_request", "No such run.", message_id=frame.message_id)
            return
        following = self._following.get(run.id)
        if following is not None:
            following.cancel()  # the newest resume wins
        assert self._tasks is not None
        self._tasks.start_soon(self._follow, run, frame.after, None)

    async def _follow(self, run: RunHandle, after: int, request_id: str | None) -> None:
        """Send the run's events after `after` as frames, until `done`."""
        with anyio.CancelScope() as scope:
            self._following[run.id] = scope
            try:
                frame_head = _frame_heads(run.id, request_id)
                send = self._send
                async with run.follow(after) as batches:
                    async for batch in batches:
                        for event in batch:
                            await send(_frame(frame_head, event))
            finally:
                if self._following.get(run.id) is scope:
                    del self._following[run.id]

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


def _frame_code(exc: ChatstreamError) -> str:
    """The contract's error codes for frames (HTTP's are finer grained)."""
    if isinstance(exc, RateLimited | ServerShutdown):
        return exc.code  # rate_limited, too_many_runs, server_shutdown
    if isinstance(exc, DatabaseUnavailable):
        return "internal"  # retryable, and not the caller's doing
    if isinstance(exc, ServiceUnavailable):
        return "rate_limited"  # at capacity: retry shortly, like a rate limit
    if isinstance(exc, InvalidRequest | NotFound):
        return "invalid_request"
    return "internal"


def _request_id_of(text: str) -> str | None:
    """The `request_id` of a frame that failed validation, to echo back if there is one."""
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    request_id = frame.get("request_id") if isinstance(frame, dict) else None
    return request_id if isinstance(request_id, str) and len(request_id) <= 200 else None


def _frame_heads(message_id: uuid.UUID, request_id: str | None) -> tuple[str, str]:
    """The fields a frame adds before the event's own: with and without `message_id`.

    `start` and `done` already carry `message_id`; it is not repeated.
    """
    head = (
        '{"request_id":' + orjson.dumps(request_id).decode() + ","
        if request_id is not None
        else "{"
    )
    return head + f'"message_id":"{message_id}","seq":', head + '"seq":'


def _frame(heads: tuple[str, str], event: Event) -> str:
    head = heads[1] if event.type in ("start", "done") else heads[0]
    return f"{head}{event.seq},{event.json[1:].decode()}"
