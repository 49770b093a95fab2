"""Response bodies, and the OpenAPI description of the SSE events.

The event schemas are derived from the `TypedDict`s the streaming core uses,
so the documentation cannot drift from what is sent.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from chatstream.api.validators import NO_NUL, Text
from chatstream.owners import internal_names
from chatstream.runs.events import EventPayload, MessageStatus
from chatstream.runs.service import ChatInput
from chatstream.runs.session_events import SessionEventPayload
from chatstream.runs.session_gate import IfBusy

SYSTEM_PROMPT_MAX_CHARS = 32_000

# A user's message (`POST /api/chat`, an edit).
UserText = Annotated[
    str,
    Field(
        min_length=1,
        # At least one character that is not whitespace. Spelled out because a
        # bare `\S` means three things: JSON Schema's (ECMA-262) whitespace lacks
        # U+0085 and U+001C-U+001F, the validator's (Unicode) lacks U+FEFF and
        # U+001C-U+001F, and the chat service's (Python's `str.strip`) lacks
        # U+FEFF; this class excludes what any of the three calls whitespace, so
        # what the schema accepts, the validator and the service accept too.
        pattern=r"[^\s\u0085\uFEFF\u001C-\u001F]",
        description="The user's message: 1 to CHATSTREAM_MAX_MESSAGE_CHARS characters, "
        "not only whitespace.",
    ),
    NO_NUL,
]


class ChatRequest(BaseModel):
    """The body of `POST /api/chat/stream`, `POST /api/chat` and the WebSocket `chat` frame."""

    model_config = ConfigDict(extra="forbid")

    message: UserText
    session_id: uuid.UUID | None = Field(
        default=None, description="Continue this session; absent: a new session is created."
    )
    model: Text | None = Field(default=None, description="One of `GET /api/models`.")
    system_prompt: Annotated[str, Field(max_length=SYSTEM_PROMPT_MAX_CHARS), NO_NUL] | None = Field(
        default=None, description="Used when a new session is created."
    )
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="1 to CHATSTREAM_MAX_TOKENS (also the default)."
    )
    client_message_id: Annotated[str, Field(min_length=1, max_length=200), NO_NUL] | None = Field(
        default=None,
        description="Idempotency key, unique per owner: a repeat starts no second run.",
    )
    chunk_chars: Annotated[int, Field(ge=1, le=4096)] | None = Field(
        default=None,
        description="Coalesce `delta` text into pieces of at least this many characters.",
    )
    if_busy: IfBusy = Field(
        default="reject",
        description="While a run is live in `session_id`: `reject` (409 `run_in_progress`, the "
        "live run's `message_id` in `details`), `enqueue` (the answer starts once the live run "
        "has ended) or `interrupt` (the live run is cancelled, then this one starts).",
    )

    def to_input(self) -> ChatInput:
        return ChatInput(
            message=self.message,
            session_id=self.session_id,
            model=self.model,
            system_prompt=self.system_prompt,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            client_message_id=self.client_message_id,
            chunk_chars=self.chunk_chars,
            if_busy=self.if_busy,
        )


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable: invalid_request, not_found, rate_limited, …")
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Annotated[str, Field(min_length=1, max_length=200), NO_NUL] | None = None
    model: Text | None = Field(default=None, description="One of `GET /api/models`.")
    system_prompt: Annotated[str, Field(max_length=SYSTEM_PROMPT_MAX_CHARS), NO_NUL] | None = None


class SessionPatch(SessionCreate):
    """Only the fields present are changed; `null` clears `title` or `system_prompt`."""


class ActiveRun(BaseModel):
    message_id: uuid.UUID = Field(
        description="The live run: follow it with `GET /api/runs/{message_id}/events`."
    )


class SessionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    owner: str
    title: str | None
    model: str | None
    system_prompt: str | None
    created_at: datetime
    updated_at: datetime
    active_run: ActiveRun | None = Field(
        default=None,
        description="The run live in this session right now, or null. Watch "
        "`GET /api/sessions/{id}/events` to hear when that changes.",
    )


class SessionDetail(SessionOut):
    message_count: int


class MessageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    session_id: uuid.UUID
    role: Literal["user", "assistant", "tool", "system"]
    content: str
    reasoning: str | None = Field(
        default=None,
        description="An answer's reasoning (the model's thinking, as its `reasoning` events "
        "streamed it), kept apart from `content` and never sent back to the model.",
    )
    status: MessageStatus
    model: str | None
    finish_reason: str | None
    tool_calls: list[dict[str, Any]] | None
    tool_call_id: str | None = None
    name: str | None = None
    usage: dict[str, int] | None
    metrics: dict[str, bool | float | int | None] | None  # `cached` is a bool
    created_at: datetime
    parent_id: uuid.UUID | None = Field(
        default=None,
        description="The message this one follows (null: a first message). Messages are a "
        "tree: the edits of a user message and the regenerations of an answer share a parent.",
    )


class SessionPage(BaseModel):
    items: list[SessionOut]
    next_cursor: str | None


class ChatResponse(BaseModel):
    session_id: uuid.UUID
    message: MessageOut
    persisted: bool = Field(
        description="False when the database was unreachable: the answer is kept in the "
        "server's spool and written once the database is back (send nothing again)."
    )


class RunState(BaseModel):
    message_id: uuid.UUID
    session_id: uuid.UUID
    status: Literal["running", "complete", "cancelled", "error", "interrupted"]
    last_seq: int | None = Field(
        description="The last event's sequence number; null once the run left memory."
    )


class CancelAccepted(BaseModel):
    message_id: uuid.UUID
    status: Literal["cancelling"] = "cancelling"


class ModelItem(BaseModel):
    id: str


class ModelList(BaseModel):
    default: str
    demo: bool = Field(
        description="True when answers come from the built-in offline demo upstream."
    )
    items: list[ModelItem]


class Health(BaseModel):
    status: str = Field(description="ok (liveness); ready, unavailable or shutting_down.")
    database: str | None = Field(
        default=None,
        description="ok; unreachable; or outdated (its schema is not this release's: "
        "run `chatstream migrate`).",
    )
    redis: str | None = Field(default=None, description="Only when Redis is configured.")
    live_runs: int | None = None
    spooled_runs: int | None = Field(
        default=None, description="Answers kept in the spool until the database takes them."
    )


# --- SSE -----------------------------------------------------------------------

StreamEvent = Annotated[EventPayload, Field(discriminator="type")]

SSE_DESCRIPTION = """\
A `text/event-stream` of the run's events. Every event has three fields:

    id: <seq>       1, 2, 3 … within the run, no gaps
    event: <type>   start | thinking | reasoning | delta | tool_call | tool_result
                    | error | done
    data: <JSON>    one line; its "type" equals the event field

`start` comes first, `done` always last (after the answer is committed).
`reasoning` (text) is the model's thinking, before or among the `delta`s, for
models that stream it; it is saved as the message's `reasoning`, never mixed
into its content, and `done.usage.reasoning_tokens` counts it when the model
server reports that.
`error` (code, message, retryable) comes just before `done` when the run failed.
Concatenated `delta.text` is exactly the persisted assistant content. A stream
idle for 15 s carries a comment line `: keepalive`. Resume with
`GET /api/runs/{message_id}/events` and `Last-Event-ID: <seq>`.
"""


def json_errors(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """Error responses of an SSE route, documented as the JSON they are.

    (With a `model`, FastAPI would document them under the route's own media
    type, text/event-stream.)
    """
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    return {status: {"description": text, "content": body} for status, text in descriptions.items()}


def sse_responses() -> dict[int | str, dict[str, Any]]:
    """The `responses=` entry documenting an SSE endpoint (OpenAPI 3.2 `itemSchema`)."""
    return {
        200: {
            "description": SSE_DESCRIPTION,
            "content": {
                "text/event-stream": {
                    "itemSchema": {
                        "type": "object",
                        "required": ["id", "event", "data"],
                        "properties": {
                            "id": {"type": "string", "description": "The event's sequence number."},
                            "event": {"type": "string", "description": "Equals data.type."},
                            "data": {
                                "type": "string",
                                "contentMediaType": "application/json",
                                "contentSchema": {"$ref": "#/components/schemas/StreamEvent"},
                            },
                        },
                    }
                }
            },
        }
    }


def done_terminated_stream(component: str) -> dict[str, Any]:
    """The OpenAPI `content` of `data: <JSON>` events that end with `data: [DONE]`.

    (The AI SDK's UI message stream and OpenAI's chunk stream are both this,
    each JSON event being the named component.)
    """
    return {
        "text/event-stream": {
            "itemSchema": {
                "type": "object",
                "required": ["data"],
                "properties": {
                    "data": {
                        "type": "string",
                        # The last event is the literal `[DONE]`; every other one is JSON.
                        "if": {"const": "[DONE]"},
                        "else": {
                            "contentMediaType": "application/json",
                            "contentSchema": {"$ref": f"#/components/schemas/{component}"},
                        },
                    }
                },
            }
        }
    }


SESSION_EVENTS_DESCRIPTION = """\
A `text/event-stream` of the session's events, for a second tab or device:

    event: <type>   run.started | run.ended | session.updated | session.deleted
    data: <JSON>    one line; its "type" equals the event field

On connect, the run live in the session (if any) comes first as `run.started`;
then each run's start and end (`run.ended` with its final `status`), and the
session's changes (`session.updated`: title, model, system prompt, updated_at,
after a PATCH or the auto-title), on whichever instance they happen.
`session.deleted` ends the stream. Events carry no `id`: a client that
reconnects is told the live run again. Idle streams carry `: keepalive`.
"""

SessionEvent = Annotated[SessionEventPayload, Field(discriminator="type")]


def session_events_responses() -> dict[int | str, dict[str, Any]]:
    """The `responses=` entry of `GET /api/sessions/{id}/events`."""
    return {
        200: {
            "description": SESSION_EVENTS_DESCRIPTION,
            "content": {
                "text/event-stream": {
                    "itemSchema": {
                        "type": "object",
                        "required": ["event", "data"],
                        "properties": {
                            "event": {"type": "string", "description": "Equals data.type."},
                            "data": {
                                "type": "string",
                                "contentMediaType": "application/json",
                                "contentSchema": {"$ref": "#/components/schemas/SessionEvent"},
                            },
                        },
                    }
                }
            },
        }
    }


def event_schemas() -> dict[str, Any]:
    """`StreamEvent` and every event type, as OpenAPI component schemas."""
    schema = TypeAdapter(StreamEvent).json_schema(ref_template="#/components/schemas/{model}")
    definitions: dict[str, Any] = schema.pop("$defs", {})
    definitions["StreamEvent"] = schema
    session = TypeAdapter(SessionEvent).json_schema(ref_template="#/components/schemas/{model}")
    definitions.update(session.pop("$defs", {}))
    definitions["SessionEvent"] = session
    return definitions


# --- error responses, as they really are ---------------------------------------------------

_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
UNAUTHORIZED_DESCRIPTION = (
    "With CHATSTREAM_AUTH=jwt: the bearer token is missing or not valid (`unauthorized`), "
    f"names an owner no token may (`reserved_subject`: a `sub` of {internal_names()}), "
    'or has expired (`token_expired`, with `WWW-Authenticate: Bearer error="invalid_token"`).'
)
INVALID_DESCRIPTION = "The request breaks a validation rule; `details` names each field."


def document_errors(schema: dict[str, Any]) -> None:
    """Every error response documented with the body it really has: `{"error": {…}}`.

    FastAPI documents validation failures with its own `{"detail": […]}`
    schema, which chatstream never sends (see `api.errors`); and a route's 401
    comes from the auth dependency, which FastAPI does not document.
    """
    for operation in (op for ops in schema.get("paths", {}).values() for op in ops.values()):
        responses = operation.setdefault("responses", {})
        if operation.get("security") is not None:
            responses.setdefault("401", {"description": UNAUTHORIZED_DESCRIPTION})
        for status, response in responses.items():
            if not status.startswith("4") and not status.startswith("5"):
                continue
            if status == "503" and "Health" in str(response):
                continue  # /readyz answers its health body either way
            if status == "422":
                # A route's own 422 codes (named in backquotes) stay, before the rule.
                own = response.get("description", "")
                response["description"] = (
                    f"{own} Otherwise: {INVALID_DESCRIPTION}" if "`" in own else INVALID_DESCRIPTION
                )
            response["content"] = {"application/json": {"schema": dict(_ERROR_REF)}}
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    components.setdefault(
        "ErrorBody", ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    )
