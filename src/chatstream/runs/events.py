"""The events a run emits, in the order the contract fixes.

Payloads are `TypedDict`s: plain dicts on the hot path (no validation, no
model objects per token), yet precise enough for mypy and for pydantic to
derive the OpenAPI schemas the API layer publishes.

Every payload carries its own `type`, so a data-only SSE reader, an
`EventSource` listener and a WebSocket client all see the same object.
"""

from __future__ import annotations

from typing import Literal, NotRequired, get_args

import orjson
from typing_extensions import TypedDict  # pydantic derives schemas from it on 3.11 too

EventType = Literal[
    "start", "thinking", "delta", "tool_call", "tool_result", "error", "done", "reasoning"
]

TERMINAL: EventType = "done"


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    # Of the completion tokens, those the model spent reasoning: only when the
    # model server reports them (`completion_tokens_details.reasoning_tokens`).
    reasoning_tokens: NotRequired[int]


class Metrics(TypedDict):
    ttft_ms: int | None
    duration_ms: int
    tokens_per_second: float | None
    # Present (true) only when the answer came from the answer cache.
    cached: NotRequired[bool]


class StartEvent(TypedDict):
    type: Literal["start"]
    session_id: str
    message_id: str
    user_message_id: str
    model: str


class ThinkingEvent(TypedDict):
    type: Literal["thinking"]
    elapsed_ms: int


class TopLogprob(TypedDict):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TypedDict):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ReasoningEvent(TypedDict):
    """The model's reasoning (its thinking before or between answers), never part of `delta`."""

    type: Literal["reasoning"]
    text: str


class DeltaEvent(TypedDict):
    type: Literal["delta"]
    text: str
    # The text's tokens with their log probabilities, as the model server sent
    # them: only when an OpenAI-compatible client asked (`logprobs: true`).
    logprobs: NotRequired[list[TokenLogprob]]


class ToolCallEvent(TypedDict):
    type: Literal["tool_call"]
    call_id: str
    name: str
    arguments: str
    # A call of the client's own tool (OpenAI-compatible clients): the answer, not run here.
    client: NotRequired[bool]


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
    | ReasoningEvent
    | DeltaEvent
    | ToolCallEvent
    | ToolResultEvent
    | ErrorEvent
    | DoneEvent
)


EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)

DELTA_JSON = b'{"type":"delta","text":%b}'  # a `delta` payload's JSON, as orjson writes it


class Event:
    """One entry of a run's log: a sequence number and its payload.

    A live event holds its payload, and its JSON once the log has encoded it
    (`encode_once`); an event read back from the log's buffer holds only its
    JSON and decodes it when asked. orjson's output buffers are not shrunk to
    size (4 KB for a token's event), so the JSON kept is a copy at its size.
    """

    __slots__ = ("_data", "_json", "seq", "type")

    def __init__(self, seq: int, data: EventPayload) -> None:
        self.seq = seq
        self.type: EventType = data["type"]
        self._data: EventPayload | None = data
        self._json: bytes | None = None

    @classmethod
    def from_json(cls, seq: int, type_: EventType, encoded: bytes) -> Event:
        event = cls.__new__(cls)
        event.seq = seq
        event.type = type_
        event._data = None
        event._json = encoded
        return event

    @property
    def data(self) -> EventPayload:
        if self._data is None:
            return orjson.loads(self._json or b"{}")  # type: ignore[no-any-return]
        return self._data

    @property
    def json(self) -> bytes:
        if self._json is None:
            return orjson.dumps(self._data)
        return self._json

    def encode_once(self) -> bytes:
        """The event's JSON, encoded now and kept for every reader that sends it."""
        if self._json is None:
            data = self._data
            if data is not None and data["type"] == "delta" and len(data) == 2:
                # Nearly every event (a plain `delta`, no logprobs): built
                # around its text's JSON, which is the same bytes as encoding
                # the whole payload, at its size with no copy (half the time
                # of dumps-then-copy).
                self._json = DELTA_JSON % orjson.dumps(data["text"])
            else:
                self._json = bytes(memoryview(orjson.dumps(data)))
        return self._json

    @property
    def is_terminal(self) -> bool:
        return self.type == TERMINAL

    def __repr__(self) -> str:
        return f"Event({self.seq}, {self.type})"
