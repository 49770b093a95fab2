"""The WebSocket protocol's client frames, and how frames are shaped and checked.

    {"type": "chat", "request_id": "...", ...chat request body...}
    {"type": "cancel", "message_id": "...", "request_id"?: "..."}
    {"type": "resume", "message_id": "...", "after": N, "request_id"?: "..."}
    {"type": "ping", "request_id"?: "..."}
    {"type": "auth", "token": "...", "request_id"?: "..."}

Every frame may carry a `request_id` (at most 200 characters); the server
echoes it on the `error` or `pong` that frame causes.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from chatstream.api.schemas import ChatRequest
from chatstream.api.validators import NO_NUL
from chatstream.errors import ChatstreamError, InvalidRequest, NotFound
from chatstream.runs.events import Event, EventPayload

RequestId = Annotated[str, Field(min_length=1, max_length=200), NO_NUL]


class ChatFrame(ChatRequest):
    type: Literal["chat"]
    request_id: RequestId


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: RequestId | None = None


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
    token: Annotated[str, Field(min_length=1, max_length=8192), NO_NUL]


ClientFrame = Annotated[
    ChatFrame | CancelFrame | ResumeFrame | PingFrame | AuthFrame, Field(discriminator="type")
]
client_frame: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)


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


def frame_code(exc: ChatstreamError) -> str:
    """The code of an error frame: the HTTP answer's own, but validation and missing ids.

    Those two are `invalid_request` on a socket (contract §4: a bad frame);
    a refusal a client can wait out or act on keeps its precise code
    (`rate_limited`, `too_many_runs`, `server_shutdown`, `database_unavailable`,
    `rate_limiter_unavailable`, `unavailable`, `idempotency_conflict`, …).
    """
    if isinstance(exc, InvalidRequest | NotFound):
        return "invalid_request"
    return exc.code


def request_id_of(text: str) -> str | None:
    """The `request_id` of a frame that failed validation, to echo back if there is one."""
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    request_id = frame.get("request_id") if isinstance(frame, dict) else None
    return request_id if isinstance(request_id, str) and len(request_id) <= 200 else None


def frame_heads(message_id: uuid.UUID, request_id: str | None) -> tuple[str, str]:
    """The fields a frame adds before the event's own: with and without `message_id`.

    `start` and `done` already carry `message_id`; it is not repeated.
    """
    head = (
        '{"request_id":' + orjson.dumps(request_id).decode() + ","
        if request_id is not None
        else "{"
    )
    return head + f'"message_id":"{message_id}","seq":', head + '"seq":'


def event_frame(heads: tuple[str, str], event: Event) -> str:
    head = heads[1] if event.type in ("start", "done") else heads[0]
    return f"{head}{event.seq},{event.json[1:].decode()}"


def unnumbered_frame(message_id: uuid.UUID, request_id: str | None, payload: EventPayload) -> str:
    """A frame of a run's that is not one of its events (`api/follow.py`): no `seq`.

    Shaped as that run's event frames are, so that a client that resumes
    after the last `seq` it has gets every event of the run.
    """
    frame: dict[str, Any] = {} if request_id is None else {"request_id": request_id}
    frame["message_id"] = str(message_id)
    frame.update(payload)
    return orjson.dumps(frame).decode()
