"""The Vercel AI SDK's side of `/api/ui/chat`: its request body and the chunks we send.

The chunk types are the SDK's own (`uiMessageChunkSchema` in the `ai`
package), limited to the ones chatstream sends and to the keys it fills, so
the OpenAPI description, the translator and the tests agree on one list.
Older strict clients reject unknown keys: nothing else is ever added.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from typing_extensions import TypedDict

from chatstream.api.schemas import done_terminated_stream
from chatstream.api.validators import NO_NUL, Text

# A chat id, in the body (`id`) and in paths: it names a stored session.
ChatId = Annotated[str, Field(min_length=1, max_length=200), NO_NUL]

# --- request ---------------------------------------------------------------------


class UIMessagePart(BaseModel):
    """A part of a UI message; only `text` parts of the last user message are read."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class UIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None
    role: Literal["system", "user", "assistant"]
    parts: list[UIMessagePart]


class UIChatRequest(BaseModel):
    """The body `DefaultChatTransport` sends; unknown fields (the SDK adds its own) are ignored."""

    model_config = ConfigDict(extra="ignore")

    id: ChatId = Field(
        description="The chat id: the same id from the same owner continues the same session; "
        "an unknown one starts a new session."
    )
    messages: list[UIMessage] = Field(
        description="The chat's UI messages. Only the last user message's text parts are used "
        "(joined by newlines); the server's stored history is the context."
    )
    trigger: Literal["submit-message", "regenerate-message"] = Field(
        default="submit-message",
        description="`regenerate-message` (`regenerate()`) answers a message again: the one "
        "`messageId` names or answers, else the last; its branch up to it is the context and "
        "the new answer is a sibling of the earlier ones, which stay stored.",
    )
    messageId: ChatId | None = Field(  # the SDK's own name
        default=None,
        description="With `submit-message`, when `messages` ends with it: the user message "
        "`sendMessage({text, messageId})` replaced. Its new text becomes a sibling of the "
        "stored one (an edit: a new branch; the old one is kept). With `regenerate-message`: "
        "the answer, or user message, to answer again. Our ids (answers, and a chat loaded "
        "from `GET /api/sessions/{id}/messages`) name stored messages; a user message the SDK "
        "made itself is found by its place in `messages`.",
    )
    model: Text | None = Field(default=None, description="One of `GET /api/models`.")
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="1 to CHATSTREAM_MAX_TOKENS (also the default)."
    )
    resume: bool = Field(
        default=False,
        description="false: a client disconnect cancels the run. true: the run goes on, and "
        "`GET /api/ui/chat/{chat_id}/stream` streams it again from its start.",
    )


# --- chunks ----------------------------------------------------------------------


class UIStartChunk(TypedDict):
    type: Literal["start"]
    messageId: str  # the run's message_id


class UIStartStepChunk(TypedDict):
    type: Literal["start-step"]


class ThinkingData(TypedDict):
    elapsed_ms: int


class UIThinkingChunk(TypedDict):
    """A heartbeat while the model has not started answering, or while a tool runs."""

    type: Literal["data-thinking"]
    data: ThinkingData
    transient: Literal[True]  # delivered to `onData`, never added to the message


class UITextStartChunk(TypedDict):
    type: Literal["text-start"]
    id: str


class UITextDeltaChunk(TypedDict):
    type: Literal["text-delta"]
    id: str
    delta: str


class UITextEndChunk(TypedDict):
    type: Literal["text-end"]
    id: str


class UIReasoningStartChunk(TypedDict):
    type: Literal["reasoning-start"]
    id: str


class UIReasoningDeltaChunk(TypedDict):
    type: Literal["reasoning-delta"]
    id: str
    delta: str


class UIReasoningEndChunk(TypedDict):
    type: Literal["reasoning-end"]
    id: str


class UIToolInputAvailableChunk(TypedDict):
    type: Literal["tool-input-available"]
    toolCallId: str
    toolName: str
    input: Any  # the call's arguments, parsed (the raw string if they are not JSON)


class UIToolOutputAvailableChunk(TypedDict):
    type: Literal["tool-output-available"]
    toolCallId: str
    output: Any  # the tool's result, parsed when it is JSON, else its text


class UIFinishStepChunk(TypedDict):
    type: Literal["finish-step"]


FinishReason = Literal["stop", "length", "content-filter", "tool-calls", "error", "other"]


class UIFinishChunk(TypedDict):
    type: Literal["finish"]
    finishReason: FinishReason


class UIErrorChunk(TypedDict):
    type: Literal["error"]
    errorText: str


class UIAbortChunk(TypedDict):
    type: Literal["abort"]


UIMessageChunk = (
    UIStartChunk
    | UIStartStepChunk
    | UIThinkingChunk
    | UITextStartChunk
    | UITextDeltaChunk
    | UITextEndChunk
    | UIReasoningStartChunk
    | UIReasoningDeltaChunk
    | UIReasoningEndChunk
    | UIToolInputAvailableChunk
    | UIToolOutputAvailableChunk
    | UIFinishStepChunk
    | UIFinishChunk
    | UIErrorChunk
    | UIAbortChunk
)

UI_STREAM_DESCRIPTION = """\
The Vercel AI SDK UI message stream (`x-vercel-ai-ui-message-stream: v1`):
`data: <JSON>` events, each one `UIMessageChunk`, ending with `data: [DONE]`.

    start (messageId = the run's message_id), start-step,
    text-start / text-delta / text-end (id, delta),
    tool-input-available (toolCallId, toolName, input) and
    tool-output-available (toolCallId, output) in a tool round, each round
    closed by finish-step (and the next opened by start-step),
    then finish-step and finish (finishReason).

A failed run sends `error` (errorText) before its `finish` (finishReason
`error`); a cancelled one ends with `abort`. `data-thinking` parts
(`transient`) are heartbeats while the model has not started answering.
A stream idle for 15 s carries a comment line `: keepalive`.
"""


def ui_stream_response() -> dict[str, Any]:
    """The 200 response of a UI stream route, for `responses=` (OpenAPI 3.2 `itemSchema`)."""
    return {
        "description": UI_STREAM_DESCRIPTION,
        "headers": {
            "x-vercel-ai-ui-message-stream": {
                "description": "The stream protocol's version.",
                "schema": {"type": "string", "enum": ["v1"]},
            }
        },
        "content": done_terminated_stream("UIMessageChunk"),
    }


def ui_chunk_schemas() -> dict[str, Any]:
    """`UIMessageChunk` and every chunk type, as OpenAPI component schemas."""
    adapter: TypeAdapter[Any] = TypeAdapter(Annotated[UIMessageChunk, Field(discriminator="type")])
    schema = adapter.json_schema(ref_template="#/components/schemas/{model}")
    definitions: dict[str, Any] = schema.pop("$defs", {})
    definitions["UIMessageChunk"] = schema
    for definition in definitions.values():
        # Exactly these keys: strict clients reject the ones they do not know.
        if definition.get("type") == "object":
            definition["additionalProperties"] = False
    return definitions
