"""The events a run emits, in the order the contract fixes.

Payloads are `TypedDict`s: plain dicts on the hot path (no validation, no
model objects per token), yet precise enough for mypy and for pydantic to
derive the OpenAPI schemas the API layer publishes.

Every payload carries its own `type`, so a data-only SSE reader, an
`EventSource` listener and a WebSocket client all see the same object.
"""

from __future__ import annotations

from typing import Literal

import orjson
from typing_extensions import TypedDict  # pydantic derives schemas from it on 3.11 too

EventType = Literal["start", "thinking", "delta", "tool_call", "tool_result", "error", "done"]

TERMINAL: EventType = "done"


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Metrics(TypedDict):
    ttft_ms: int | None
    duration_ms: int
    tokens_per_second: float | None


class StartEvent(TypedDict):
    type: Literal["start"]
    session_id: str
    message_id: str
    user_message_id: str
    model: str


class ThinkingEvent(TypedDict):
    type: Literal["thinking"]
    elapsed_ms: int


class DeltaEvent(TypedDict):
    type: Literal["delta"]
    text: str


class ToolCallEvent(TypedDict):
    type: Literal["tool_call"]
    call_id: str
    name: str
    arguments: str


class ToolResultEvent(TypedDict):
    type: Literal["tool_result"]
    call_id: str
    name: str
    content: str


ErrorCode = Literal[
    "upstream_error",
    "upstream_timeout",
    "upstream_rate_limited",
    "rate_limited",
    "invalid_request",
    "server_shutdown",
    "internal",
]


class ErrorEvent(TypedDict):
    type: Literal["error"]
    code: ErrorCode
    message: str
    retryable: bool


MessageStatus = Literal["complete", "cancelled", "error", "interrupted"]


class DoneEvent(TypedDict):
    type: Literal["done"]
    message_id: str
    status: MessageStatus
    finish_reason: str | None
    persisted: bool
    usage: Usage | None
    metrics: Metrics | None


EventPayload = (
    StartEvent
    | ThinkingEvent
    | DeltaEvent
    | ToolCallEvent
    | ToolResultEvent
    | ErrorEvent
    | DoneEvent
)


class Event:
    """One entry of a run's log: a sequence number and its payload.

    The JSON encoding is computed at most once, however many subscribers
    (SSE streams, sockets, resumes) read the event.
    """

    __slots__ = ("_json", "data", "seq", "type")

    def __init__(self, seq: int, data: EventPayload) -> None:
        self.seq = seq
        self.type: EventType = data["type"]
        self.data = data
        self._json: bytes | None = None

    @property
    def json(self) -> bytes:
        encoded = self._json
        if encoded is None:
            encoded = self._json = orjson.dumps(self.data)
        return encoded

    @property
    def is_terminal(self) -> bool:
        return self.type == TERMINAL

    def __repr__(self) -> str:
        return f"Event({self.seq}, {self.type})"
