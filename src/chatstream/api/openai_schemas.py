"""OpenAI's wire format, as far as chatstream's `/v1` facade speaks it.

Response shapes follow OpenAI's Chat Completions API (the request's are in
`api/openai_requests.py`: any field chatstream neither honours nor passes on
answers 400 naming it, so a client never believes an option it sent took
effect). Errors
leave in OpenAI's shape, `{"error": {"message", "type", "code", "param"}}`,
with OpenAI's statuses, so the SDKs raise their typed exceptions
(`BadRequestError` 400, `AuthenticationError` 401, `NotFoundError` 404,
`ConflictError` 409, `RateLimitError` 429, `InternalServerError` 5xx).
`OpenAIRoute` renders every error of a `/v1` route that way, including the
ones raised before the route runs (auth, body validation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from typing import Any, Literal, NotRequired

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, TypeAdapter
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from typing_extensions import TypedDict

from chatstream.api.openai_requests import CONTENT_TAGS, PART_TAGS
from chatstream.api.schemas import done_terminated_stream
from chatstream.errors import ChatstreamError
from chatstream.runs.events import TokenLogprob

# --- responses -------------------------------------------------------------------


class CompletionUsage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseFunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="JSON, as the model wrote it.")


class ResponseToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ResponseFunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = Field(description="None when the answer is only tool calls.")
    reasoning_content: str | None = Field(
        default=None,
        description="The model's reasoning, when it gave one (as DeepSeek's API names it); "
        "absent otherwise.",
    )
    refusal: None = None
    tool_calls: list[ResponseToolCall] | None = Field(
        default=None, description='Calls of your tools (finish_reason "tool_calls").'
    )


class ChoiceLogprobs(TypedDict):
    """The answer's tokens with their log probabilities, as the model server gave them."""

    content: list[TokenLogprob] | None
    refusal: None


class CompletionChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str
    logprobs: ChoiceLogprobs | None = Field(
        default=None, description="With `logprobs: true`, when the model server gives them."
    )


class ChatCompletion(BaseModel):
    id: str = Field(description='"chatcmpl-" and the run\'s message_id.')
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage


class ChunkFunctionCall(TypedDict):
    name: str
    arguments: str


class ChunkToolCall(TypedDict):
    index: int
    id: str
    type: Literal["function"]
    function: ChunkFunctionCall


class ChunkDelta(TypedDict):
    role: NotRequired[Literal["assistant"]]
    content: NotRequired[str]
    # The model's reasoning, streamed before its content (as DeepSeek's API names it).
    reasoning_content: NotRequired[str]
    tool_calls: NotRequired[list[ChunkToolCall]]


class ChunkChoice(TypedDict):
    index: int
    delta: ChunkDelta
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None


class ChatCompletionChunk(TypedDict):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]  # empty in the usage chunk
    usage: NotRequired[CompletionUsage | None]  # with stream_options.include_usage


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "chatstream"


class ModelObjectList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class OpenAIError(TypedDict):
    message: str
    type: str
    code: str | None
    param: str | None


class OpenAIErrorBody(TypedDict):
    error: OpenAIError


StreamedItem = ChatCompletionChunk | OpenAIErrorBody

STREAM_DESCRIPTION = """\
With `stream: true`: `data: <JSON>` events, each a `chat.completion.chunk`
(the first carries `delta.role`, the last `finish_reason`; with
`stream_options.include_usage` one more has `usage` and empty `choices`),
ending with `data: [DONE]`. A run that fails or is cancelled sends
`{"error": {...}}` instead of the last chunk. Otherwise one `chat.completion`.
Both carry the headers below: follow or resume the run under `/api/runs`.
"""


def completion_responses() -> dict[int | str, dict[str, Any]]:
    """The 200 response of `POST /v1/chat/completions`: JSON, or a stream of chunks."""
    identifier = {"schema": {"type": "string", "format": "uuid"}, "required": True}
    return {
        200: {
            "description": STREAM_DESCRIPTION,
            "model": ChatCompletion,
            "headers": {
                "X-Chatstream-Session-Id": {"description": "The session.", **identifier},
                "X-Chatstream-Message-Id": {"description": "The run.", **identifier},
            },
            "content": done_terminated_stream("StreamedItem"),
        }
    }


def openai_stream_schemas() -> dict[str, Any]:
    """`StreamedItem` (a chunk or an error) and its parts, as OpenAPI component schemas."""
    adapter: TypeAdapter[Any] = TypeAdapter(StreamedItem)
    schema = adapter.json_schema(ref_template="#/components/schemas/{model}")
    definitions: dict[str, Any] = schema.pop("$defs", {})
    definitions["StreamedItem"] = schema
    for definition in definitions.values():
        # Exactly these keys: strict clients reject the ones they do not know.
        if definition.get("type") == "object":
            definition["additionalProperties"] = False
    return definitions


def document_openai_errors(schema: dict[str, Any]) -> None:
    """The /v1 operations' errors documented as they are sent: OpenAI's shape, never a 422."""
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIErrorBody"}}}
    for path, operations in schema.get("paths", {}).items():
        if not path.startswith("/v1/"):
            continue
        for operation in operations.values():
            responses = operation.get("responses", {})
            responses.pop("422", None)  # validation failures are 400 here
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    response["content"] = dict(body)


def openai_errors(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    return {
        status: {"model": OpenAIErrorBody, "description": text}
        for status, text in descriptions.items()
    }


# --- errors ----------------------------------------------------------------------


def error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def openai_error_response(
    status: int,
    message: str,
    *,
    code: str | None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: OpenAIErrorBody = {
        "error": {"message": message, "type": error_type(status), "code": code, "param": param}
    }
    return JSONResponse(body, status_code=status, headers=headers)


def from_chatstream_error(exc: ChatstreamError) -> JSONResponse:
    headers = dict(exc.headers)
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    if exc.status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    # OpenAI answers 400 for every request it cannot take as sent.
    status = 400 if exc.status == 422 else exc.status
    return openai_error_response(
        status, exc.message, code=exc.code, param=_param_of(exc.details), headers=headers
    )


def _param_of(details: Any) -> str | None:
    """The request field a problem is about, in OpenAI's spelling: `messages.[0].content`."""
    if not isinstance(details, list) or not details or not isinstance(details[0], dict):
        return None
    loc = details[0].get("loc", ())
    location = [
        part
        for index, part in enumerate(loc)
        if part not in ("body", "header")
        and not (part in CONTENT_TAGS and index and loc[index - 1] == "content")
        # A content part's type, the tag pydantic puts after its index.
        and not (
            part in PART_TAGS
            and index >= 2
            and isinstance(loc[index - 1], int)
            and loc[index - 2] in CONTENT_TAGS
        )
    ]
    if not location:
        return None
    return ".".join(f"[{part}]" if isinstance(part, int) else str(part) for part in location)


def from_validation_error(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {}
    param = _param_of([first])
    if first.get("type") == "extra_forbidden":
        message = f"Unsupported parameter: '{param}' is not supported by this server."
        return openai_error_response(400, message, code="unsupported_parameter", param=param)
    if first.get("type") == "json_invalid":
        return openai_error_response(400, "The body is not valid JSON.", code="invalid_json")
    reason = str(first.get("msg", "not valid"))
    return openai_error_response(
        400, f"Invalid value for '{param}': {reason}.", code="invalid_value", param=param
    )


class OpenAIRoute(APIRoute):
    """A route whose every error, however early, leaves in OpenAI's error shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_in_openai_terms(request: Request) -> Response:
            try:
                return await handle(request)
            except ChatstreamError as exc:
                return from_chatstream_error(exc)
            except RequestValidationError as exc:
                return from_validation_error(exc)
            except HTTPException as exc:  # the body limit, counted as the body streams in
                message = exc.detail if isinstance(exc.detail, str) else "Request failed."
                code = "payload_too_large" if exc.status_code == 413 else None
                return openai_error_response(exc.status_code, message, code=code)

        return handle_in_openai_terms
