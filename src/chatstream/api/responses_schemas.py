"""The Responses API's wire shapes, as far as chatstream sends them: for OpenAPI.

The encoder (`api/responses_encoder.py`) builds plain dicts on the hot path;
these TypedDicts describe exactly those dicts, so `/openapi.json` documents
the `response` object and every stream event with the keys they carry
(field-level truth: openai-python's `types/responses/`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import Field, TypeAdapter
from typing_extensions import TypedDict

from chatstream.runs.events import TokenLogprob

ItemStatus = Literal["in_progress", "completed", "incomplete"]


class OutputText(TypedDict):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]
    # With include: ["message.output_text.logprobs"], when the model server gives them.
    logprobs: NotRequired[list[TokenLogprob]]


class ReasoningText(TypedDict):
    type: Literal["reasoning_text"]
    text: str


class MessageItem(TypedDict):
    id: str
    type: Literal["message"]
    status: ItemStatus
    role: Literal["assistant"]
    content: list[OutputText]


class ReasoningItem(TypedDict):
    id: str
    type: Literal["reasoning"]
    status: ItemStatus
    summary: list[Any]
    content: list[ReasoningText]


class FunctionCallItem(TypedDict):
    id: str
    type: Literal["function_call"]
    status: ItemStatus
    call_id: str
    name: str
    arguments: str
    namespace: NotRequired[str]


OutputItem = Annotated[MessageItem | ReasoningItem | FunctionCallItem, Field(discriminator="type")]


class InputTokensDetails(TypedDict):
    cached_tokens: int


class OutputTokensDetails(TypedDict):
    reasoning_tokens: int


class ResponseUsage(TypedDict):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseError(TypedDict):
    code: str
    message: str


class ResponseObject(TypedDict):
    """A response: `resp_` and its run's message id (hex)."""

    id: str
    object: Literal["response"]
    created_at: float
    status: Literal["queued", "in_progress", "completed", "incomplete", "cancelled", "failed"]
    model: str
    output: list[OutputItem]
    usage: ResponseUsage | None
    error: ResponseError | None
    incomplete_details: dict[str, Any] | None
    instructions: str | None
    metadata: dict[str, str]
    tools: list[Any]
    tool_choice: Any
    parallel_tool_calls: bool
    temperature: float | None
    top_p: float | None
    max_output_tokens: int | None
    previous_response_id: str | None
    text: dict[str, Any]
    store: bool
    background: bool
    reasoning: None
    truncation: Literal["disabled"]


class _Numbered(TypedDict):
    sequence_number: int


class ResponseLifecycleEvent(_Numbered):
    type: Literal[
        "response.created",
        "response.in_progress",
        "response.completed",
        "response.incomplete",
        "response.failed",
    ]
    response: ResponseObject


class OutputItemEvent(_Numbered):
    type: Literal["response.output_item.added", "response.output_item.done"]
    output_index: int
    item: OutputItem


class ContentPartEvent(_Numbered):
    type: Literal["response.content_part.added", "response.content_part.done"]
    item_id: str
    output_index: int
    content_index: int
    part: OutputText | ReasoningText


class OutputTextDeltaEvent(_Numbered):
    type: Literal["response.output_text.delta"]
    item_id: str
    output_index: int
    content_index: int
    logprobs: list[TokenLogprob]
    delta: str


class OutputTextDoneEvent(_Numbered):
    type: Literal["response.output_text.done"]
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[TokenLogprob]


class ReasoningTextDeltaEvent(_Numbered):
    type: Literal["response.reasoning_text.delta"]
    item_id: str
    output_index: int
    content_index: int
    delta: str


class ReasoningTextDoneEvent(_Numbered):
    type: Literal["response.reasoning_text.done"]
    item_id: str
    output_index: int
    content_index: int
    text: str


class FunctionCallArgumentsDeltaEvent(_Numbered):
    type: Literal["response.function_call_arguments.delta"]
    item_id: str
    output_index: int
    delta: str


class FunctionCallArgumentsDoneEvent(_Numbered):
    type: Literal["response.function_call_arguments.done"]
    item_id: str
    output_index: int
    arguments: str


class StreamErrorEvent(_Numbered):
    """The follow's stream was lost here (the run goes on): numbered as the last event
    sent, so resuming `starting_after` it misses nothing."""

    type: Literal["error"]
    code: str
    message: str
    param: None


ResponseStreamEvent = Annotated[
    ResponseLifecycleEvent
    | OutputItemEvent
    | ContentPartEvent
    | OutputTextDeltaEvent
    | OutputTextDoneEvent
    | ReasoningTextDeltaEvent
    | ReasoningTextDoneEvent
    | FunctionCallArgumentsDeltaEvent
    | FunctionCallArgumentsDoneEvent
    | StreamErrorEvent,
    Field(discriminator="type"),
]

STREAM_DESCRIPTION = """\
The `response` object (JSON), or with `stream: true` a `text/event-stream`
of numbered events, each `event: <type>` and `data: <JSON>` with
`sequence_number` from 0 (`ResponseStreamEvent`); the last is
`response.completed`, `response.incomplete` or `response.failed`. No
`[DONE]`. With `background: true`, the response at once, `queued`."""


def response_responses() -> dict[int | str, dict[str, Any]]:
    """The 200 response of `POST /v1/responses` and `GET /v1/responses/{id}`."""
    identifier = {"schema": {"type": "string", "format": "uuid"}, "required": True}
    return {
        200: {
            "description": STREAM_DESCRIPTION,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ResponseObject"}},
                "text/event-stream": {
                    "itemSchema": {
                        "type": "object",
                        "required": ["event", "data"],
                        "properties": {
                            "event": {"type": "string"},
                            "data": {
                                "type": "string",
                                "contentMediaType": "application/json",
                                "contentSchema": {
                                    "$ref": "#/components/schemas/ResponseStreamEvent"
                                },
                            },
                        },
                    }
                },
            },
            "headers": {
                "X-Chatstream-Session-Id": {"description": "The session.", **identifier},
                "X-Chatstream-Message-Id": {"description": "The run.", **identifier},
            },
        }
    }


def responses_schemas() -> dict[str, Any]:
    """`ResponseObject`, `ResponseStreamEvent` and their parts, as OpenAPI components."""
    found: dict[str, Any] = {}
    adapters: dict[str, TypeAdapter[Any]] = {
        "ResponseObject": TypeAdapter(ResponseObject),
        "ResponseStreamEvent": TypeAdapter(ResponseStreamEvent),
    }
    for name, adapter in adapters.items():
        schema = adapter.json_schema(ref_template="#/components/schemas/{model}")
        found.update(schema.pop("$defs", {}))
        found[name] = schema
    for definition in found.values():
        # Exactly these keys: what is sent is what is documented, no more.
        if definition.get("type") == "object":
            definition["additionalProperties"] = False
    return found
