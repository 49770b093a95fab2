"""`/v1`: the OpenAI-compatible facade (`POST /v1/chat/completions`, `GET /v1/models`).

A thin adapter, so OpenAI SDKs and the tools built on them work with
`base_url` pointed at `/v1` (and the JWT, when auth is on, as the API key).
Every exchange is an ordinary run: it goes through the chat service's
limits, is persisted once, and can be followed, resumed or cancelled under
`/api/runs/{X-Chatstream-Message-Id}`; a client that disconnects leaves it
running (unless CHATSTREAM_ON_DISCONNECT=cancel).

    X-Chatstream-Session-Id given   the session's stored history is the
                                    context; only the new messages are taken
                                    (the last user message, or the tool
                                    results after the stored calls)
    not given                       `messages` is the whole context, sent to
                                    the model as given (never windowed: over
                                    CHATSTREAM_HISTORY_CHARS is a 400); a new
                                    session stores it (system and developer
                                    messages as its system prompt, the rest
                                    as its first messages) and then the run

The client's own options (`tools`, `response_format`, `stop`, ...) go to the
model as sent, and nothing of chatstream's own is added (no default
`max_tokens`; the built-in tools only with CHATSTREAM_OPENAI_SERVER_TOOLS).
The model's calls of the client's tools end the run (`finish_reason:
"tool_calls"`) and reach the client as OpenAI sends them; they are stored on
the answer, and the client's results, sent back, are stored as `tool` rows.
Built-in tools, when offered, run server-side; their calls are not shown to
the client, who did not offer them: it sees every round's text, in order.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from chatstream.api.body_limit import payload_too_large
from chatstream.api.deps import PrincipalDep, SettingsDep
from chatstream.api.follow import follow_to_end
from chatstream.api.openai_requests import CompletionRequest
from chatstream.api.openai_schemas import (
    ChatCompletion,
    ModelObject,
    ModelObjectList,
    OpenAIRoute,
    completion_responses,
    openai_error_response,
    openai_errors,
)
from chatstream.api.openai_translation import (
    CompletionChunkTranslation,
    ToolCalls,
    choice_logprobs,
    failure_of,
    usage_of,
)
from chatstream.api.openai_turns import check_vision, turn_of
from chatstream.api.quota import GatedChatDep
from chatstream.api.schemas import ChatRequest
from chatstream.api.translated_stream import TranslatedStream
from chatstream.api.validators import Text
from chatstream.errors import ChatstreamError, InvalidRequest, NotFound, failed_run_status
from chatstream.runs.events import DoneEvent, ErrorEvent, Event, TokenLogprob
from chatstream.runs.service import ChatInput
from chatstream.runs.spec import Passthrough

__all__ = ["CompletionChunkTranslation", "router"]

router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)

SESSION_HEADER = "X-Chatstream-Session-Id"
MESSAGE_HEADER = "X-Chatstream-Message-Id"


class ModelNotFound(NotFound):
    code = "model_not_found"


def chat_input(**fields: Any) -> ChatInput:
    """A `/v1` request's chat turn; a 400 in OpenAI's terms naming the field if not valid."""
    try:
        return ChatRequest(**fields).to_input()
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        where = {"message": "messages", "system_prompt": "messages"}.get(field, field)
        raise InvalidRequest(
            f"Invalid value for '{where}': {error['msg']}.", details=[{"loc": ["body", where]}]
        ) from None


_ERRORS = openai_errors(
    {
        400: "Not valid, or a field chatstream does not support (`param` names it).",
        401: "Auth is on and the API key (the JWT) is missing or not valid.",
        404: "`model` is not one of `GET /v1/models`, or X-Chatstream-Session-Id is not "
        "one of your sessions.",
        409: "The run was cancelled before it completed (its partial answer is saved).",
        413: "The body is over CHATSTREAM_MAX_BODY_BYTES.",
        429: "`rate_limited` (CHATSTREAM_RATE_LIMIT) or `too_many_runs` "
        "(CHATSTREAM_MAX_CONCURRENT_RUNS), with Retry-After.",
        500: "The run failed inside chatstream (its partial answer is saved).",
        502: "The model server failed (the partial answer is saved).",
        503: "At capacity, shutting down, the database or the model server unavailable.",
        504: "The model server timed out (the partial answer is saved).",
    }
)


@router.post(
    "/chat/completions",
    response_model=None,
    responses={**completion_responses(), **_ERRORS},
    summary="OpenAI Chat Completions: one answer, as JSON or as a stream of chunks",
)
async def chat_completions(
    body: CompletionRequest,
    request: Request,
    principal: PrincipalDep,
    chat: GatedChatDep,
    settings: SettingsDep,
    session_id: Annotated[
        uuid.UUID | None,
        Header(
            alias=SESSION_HEADER,
            description="Continue this session, with its stored history as the context.",
        ),
    ] = None,
) -> Response:
    if body.model not in settings.models:
        raise ModelNotFound(f"The model '{body.model}' does not exist here; see GET /v1/models.")
    check_vision(body.messages, body.model, settings.models_without_vision)
    turn = turn_of(
        body.messages, continuing=session_id is not None, max_chars=settings.history_chars
    )
    max_tokens = body.max_completion_tokens or body.max_tokens
    chat_request = chat_input(
        message=turn.message,
        session_id=session_id,
        model=body.model,
        system_prompt=turn.system_prompt,
        temperature=body.temperature,
        max_tokens=min(max_tokens, settings.max_tokens) if max_tokens else None,
    )
    passthrough = Passthrough(
        messages=turn.context,
        fields=body.upstream_fields(settings.max_tokens),
        client_tools=bool(body.tools),
        server_tools=settings.openai_server_tools,
    )
    chat_request = dataclasses.replace(chat_request, passthrough=passthrough)
    started = await chat.start(principal, chat_request, turn.shape)
    run = started.run
    headers = {SESSION_HEADER: str(run.session_id), MESSAGE_HEADER: str(run.id)}
    headers.update(started.headers)
    created = int(time.time())
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return TranslatedStream(
            run,
            CompletionChunkTranslation(created=created, include_usage=include_usage),
            keepalive_s=settings.keepalive_interval_s,
            send_timeout_s=settings.send_timeout_s,
            headers=headers,
        )

    text: list[str] = []
    reasoning: list[str] = []
    logprobs: list[TokenLogprob] = []  # only when the client asked and the model gave them
    calls = ToolCalls()
    error: ErrorEvent | None = None
    done: DoneEvent | None = None

    def read(batch: list[Event]) -> None:
        nonlocal error, done
        for event in batch:
            data: Any = event.data
            if event.type == "delta":
                text.append(data["text"])
                if "logprobs" in data:
                    logprobs.extend(data["logprobs"])
            elif event.type == "reasoning":
                reasoning.append(data["text"])
            elif event.type in ("tool_call", "tool_result"):
                calls.see(event.type, data)
            elif event.type == "error":
                error = data
            elif event.type == "done":
                done = data

    await follow_to_end(run, request, read)
    if done is None:
        return Response(status_code=499, headers=headers)  # the client left; nobody reads this
    failure = failure_of(done, error)
    if failure is not None:
        status = (
            409
            if failure["error"]["code"] == "cancelled"
            else failed_run_status(failure["error"]["code"] or "")
        )
        return openai_error_response(
            status, failure["error"]["message"], code=failure["error"]["code"], headers=headers
        )
    completion = ChatCompletion.model_validate(
        {
            "id": f"chatcmpl-{run.id}",
            "created": created,
            "model": chat_request.model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "content": "".join(text) or (None if calls.pending else ""),
                        "reasoning_content": "".join(reasoning) or None,
                        "tool_calls": [
                            {key: call[key] for key in ("id", "type", "function")}
                            for call in calls.pending
                        ]
                        or None,
                    },
                    "finish_reason": done["finish_reason"] or "stop",
                    "logprobs": choice_logprobs(logprobs) if logprobs else None,
                }
            ],
            "usage": usage_of(done),
        }
    )
    answer = completion.model_dump(mode="json")
    if not reasoning:
        del answer["choices"][0]["message"]["reasoning_content"]  # only from models that think
    return JSONResponse(answer, headers=headers)


@router.get("/models", response_model=ModelObjectList, summary="OpenAI: the models you may ask for")
async def list_models(settings: SettingsDep) -> ModelObjectList:
    return ModelObjectList(data=[ModelObject(id=model) for model in settings.models])


@router.get(
    "/models/{model_id:path}",
    response_model=ModelObject,
    responses=openai_errors({404: "Not one of `GET /v1/models`."}),
    summary="OpenAI: one model you may ask for",
)
async def retrieve_model(model_id: Text, settings: SettingsDep) -> ModelObject:
    if model_id not in settings.models:
        raise ModelNotFound(f"The model '{model_id}' does not exist here; see GET /v1/models.")
    return ModelObject(id=model_id)


class UnknownPath(NotFound):
    code = "unknown_url"


class MethodNotAllowed(ChatstreamError):
    status = 405
    code = "method_not_allowed"


def unknown_paths(*routers: APIRouter) -> APIRouter:
    """The `/v1` catch-all, included after `routers`: OpenAI's 404 or 405 for the rest."""
    fallback = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)

    @fallback.api_route(
        "/{path:path}",
        methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
        include_in_schema=False,
    )
    async def unknown(request: Request) -> Response:
        """Any other `/v1/...` request: OpenAI's 404 (unknown path) or 405 (wrong method)."""
        allowed = sorted(
            method
            for given in routers
            for route in given.routes
            if isinstance(route, APIRoute) and route.path_regex.match(request.url.path)
            for method in route.methods or ()
        )
        where = f"{request.method} {request.url.path}"
        if allowed:
            raise MethodNotAllowed(
                f"{where} is not allowed; use {', '.join(allowed)}.",
                headers={"Allow": ", ".join(allowed)},
            )
        raise UnknownPath(
            f"Unknown request URL: {where}. See GET /openapi.json for what /v1 serves."
        )

    return fallback


def too_large(scope: Scope, message: str) -> Response:
    """The body limit's 413: in OpenAI's shape under /v1, chatstream's elsewhere."""
    if str(scope.get("path", "")).startswith(router.prefix + "/"):
        return openai_error_response(413, message, code="payload_too_large")
    return payload_too_large(scope, message)
