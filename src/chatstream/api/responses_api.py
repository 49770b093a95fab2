"""`/v1/responses`: OpenAI's Responses API, on top of runs.

A response is a run: `resp_<message_id>` names the run's answer, so it can
be followed, resumed, cancelled or read back from any instance, exactly as
`/api/runs/{message_id}`; `previous_response_id` continues the answer's
session. Runs already are Responses' background mode (server-side, numbered,
resumable), so `background: true` only answers at once instead of waiting.

    POST   /v1/responses                       create (JSON, a stream, or at once)
    GET    /v1/responses/{id}                  the response as it stands;
           ?stream=true&starting_after=N       its events after number N, live
    POST   /v1/responses/{id}/cancel           stop it (what it generated is kept)
    DELETE /v1/responses/{id}                  delete its turn (input and answer)
    GET    /v1/responses/{id}/input_items      what it answered
    POST   /v1/responses/compact               not supported: a 400 saying so

The body is turned into a Chat Completions turn (`api/responses_requests.py`)
and the run's events into Responses' events (`api/responses_encoder.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chatstream.api.deps import PrincipalDep, RegistryDep, SettingsDep, State
from chatstream.api.follow import follow_to_end
from chatstream.api.openai_compat import (
    MESSAGE_HEADER,
    SESSION_HEADER,
    ModelNotFound,
    chat_input,
)
from chatstream.api.openai_schemas import OpenAIRoute, openai_error_response, openai_errors
from chatstream.api.openai_turns import check_vision, turn_of
from chatstream.api.quota import GatedChatDep
from chatstream.api.responses_encoder import ResponseEcho, ResponseEncoder
from chatstream.api.responses_lookup import (
    handle,
    input_item,
    message_id_of,
    resolved,
    session_of,
    snapshot,
)
from chatstream.api.responses_requests import ResponseRequest, chat_messages, validated
from chatstream.api.responses_schemas import response_responses
from chatstream.api.translated_stream import TranslatedStream
from chatstream.api.validators import Text
from chatstream.errors import Conflict, InvalidRequest, NotFound, failed_run_status
from chatstream.runs.handle import RunHandle
from chatstream.runs.spec import Passthrough
from chatstream.storage.records import Parent
from chatstream.storage.turns import Turns

router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)

# Names the hosted tools a request asked for, which nothing here runs (not offered).
IGNORED_TOOLS_HEADER = "X-Chatstream-Ignored-Tools"

_ERRORS = openai_errors(
    {
        400: "Not valid (`param` names the field), or a hosted tool chatstream cannot run.",
        401: "Auth is on and the API key (the JWT) is missing or not valid.",
        404: "`model` is not one of `GET /v1/models`, or no such response of yours.",
        429: "`rate_limited`, `too_many_runs` or `quota_exceeded`, with Retry-After.",
        503: "At capacity, shutting down, the database or the model server unavailable.",
    }
)


class CompactionUnsupported(InvalidRequest):
    code = "unsupported_endpoint"


class ResponseInProgress(Conflict):
    code = "response_in_progress"


def _echo(body: ResponseRequest) -> ResponseEcho:
    text = (
        body.text.model_dump(mode="json", by_alias=True, exclude_none=True) if body.text else None
    )
    return ResponseEcho(
        instructions=body.instructions,
        metadata=body.metadata,
        tools=[tool.model_dump(mode="json", exclude_none=True) for tool in body.tools or ()],
        tool_choice=body.tool_choice if body.tool_choice is not None else "auto",
        parallel_tool_calls=body.parallel_tool_calls is not False,
        temperature=body.temperature,
        top_p=body.top_p,
        max_output_tokens=body.max_output_tokens,
        previous_response_id=body.previous_response_id,
        text=text or {"format": {"type": "text"}},
        store=body.store,
        background=body.background,
    )


@router.post(
    "/responses",
    response_model=None,
    responses={**response_responses(), **_ERRORS},
    summary="OpenAI Responses: create a response (JSON, a stream of events, or at once)",
)
async def create_response(
    body: ResponseRequest,
    request: Request,
    principal: PrincipalDep,
    chat: GatedChatDep,
    settings: SettingsDep,
    registry: RegistryDep,
    state: State,
) -> Response:
    if body.model not in settings.models:
        raise ModelNotFound(f"The model '{body.model}' does not exist here; see GET /v1/models.")
    session_id = previous = None
    if body.previous_response_id is not None and not body.store:
        # Not storing this answer deletes its conversation: never a stored one.
        raise InvalidRequest(
            "store: false starts a conversation that is not kept; it cannot continue "
            "previous_response_id's. Send the whole input instead, or store: true.",
            details=[{"loc": ["body", "store"]}],
        )
    if body.previous_response_id is not None:
        session_id, previous = await session_of(state, principal.owner, body.previous_response_id)
    if isinstance(body.input, list):
        body.input = await resolved(body.input, state, registry, principal.owner)
    messages = validated(chat_messages(body))
    check_vision(messages, body.model, settings.models_without_vision)
    turn = turn_of(messages, continuing=session_id is not None, max_chars=settings.history_chars)
    echo = _echo(body)
    # The previous response's branch goes on from it, whichever is the session's leaf;
    # what the request asked is kept with its message, to be read back with the response.
    shape = dataclasses.replace(turn.shape, request_options=dataclasses.asdict(echo))
    if previous is not None:
        shape = dataclasses.replace(shape, parent=Parent(previous))
    fields = body.upstream_fields(settings.max_tokens)
    chat_request = chat_input(
        message=turn.message,
        session_id=session_id,
        model=body.model,
        system_prompt=turn.system_prompt,
        temperature=body.temperature,
        max_tokens=fields.get("max_tokens"),
    )
    passthrough = Passthrough(
        messages=turn.context,
        fields=fields,
        client_tools="tools" in fields,
        server_tools=settings.openai_server_tools,
    )
    chat_request = dataclasses.replace(chat_request, passthrough=passthrough)
    started = await chat.start(principal, chat_request, shape)
    run = started.run
    headers = {SESSION_HEADER: str(run.session_id), MESSAGE_HEADER: str(run.id), **started.headers}
    hosted = body.hosted_tools()
    if hosted:
        headers[IGNORED_TOOLS_HEADER] = ", ".join(dict.fromkeys(hosted))
    if not body.store:
        await state.unstored.forget_after(run, principal.owner)
    encoder = ResponseEncoder(
        message_id=str(run.id), model=body.model, echo=echo, namespaces=body.namespaces()
    )
    if body.stream:
        return _stream(run, encoder, settings, headers)
    if body.background:
        queued = encoder.response()
        queued["status"] = "queued"
        return JSONResponse(queued, headers=headers)
    ended = await follow_to_end(run, request, encoder.encode)
    if not ended:
        return Response(status_code=499, headers=headers)  # the client left; nobody reads this
    failed = encoder.run_error
    if encoder.status == "failed" and failed is not None:
        # As /v1/chat/completions: a run that failed is an HTTP error (the SDKs raise it).
        status = failed_run_status(failed["code"])
        return openai_error_response(
            status, failed["message"], code=failed["code"], headers=headers
        )
    return JSONResponse(encoder.response(), headers=headers)


def _stream(
    run: RunHandle, encoder: ResponseEncoder, settings: Any, headers: dict[str, str]
) -> TranslatedStream:
    return TranslatedStream(
        run,
        encoder,
        keepalive_s=settings.keepalive_interval_s,
        send_timeout_s=settings.send_timeout_s,
        headers=headers,
        closing=b"",  # the Responses stream ends with its last event, no [DONE]
    )


@router.get(
    "/responses/{response_id}",
    response_model=None,
    responses={**response_responses(), **openai_errors({404: "No such response of yours."})},
    summary="OpenAI Responses: a response as it stands, or its events from any point",
)
async def retrieve_response(
    response_id: Text,
    request: Request,
    principal: PrincipalDep,
    registry: RegistryDep,
    settings: SettingsDep,
    state: State,
    stream: bool = False,
    starting_after: Annotated[
        int | None, Query(ge=0, description="With stream: only events numbered above this.")
    ] = None,
) -> Response:
    run, created_at, echo = await handle(state, registry, principal.owner, response_id)
    encoder = ResponseEncoder(
        message_id=str(run.id),
        model="",
        created_at=created_at,
        echo=echo,
        starting_after=-1 if starting_after is None else starting_after,
    )
    headers = {SESSION_HEADER: str(run.session_id), MESSAGE_HEADER: str(run.id)}
    if stream:
        return _stream(run, encoder, settings, headers)
    await snapshot(run, encoder)
    return JSONResponse(encoder.response(), headers=headers)


@router.post(
    "/responses/{response_id}/cancel",
    response_model=None,
    responses=openai_errors({404: "No such response of yours."}),
    summary="OpenAI Responses: cancel a response (what it generated is kept)",
)
async def cancel_response(
    response_id: Text, principal: PrincipalDep, registry: RegistryDep, state: State
) -> Response:
    run, created_at, echo = await handle(state, registry, principal.owner, response_id)
    await run.cancel()
    encoder = ResponseEncoder(message_id=str(run.id), model="", created_at=created_at, echo=echo)
    with anyio.move_on_after(5):
        await run.wait()
    await snapshot(run, encoder)
    return JSONResponse(encoder.response())


@router.delete(
    "/responses/{response_id}",
    response_model=None,
    responses=openai_errors(
        {404: "No such response of yours.", 409: "It is still running: cancel it first."}
    ),
    summary="OpenAI Responses: delete a response (its input and answer)",
)
async def delete_response(
    response_id: Text, principal: PrincipalDep, registry: RegistryDep, state: State
) -> Response:
    run, _, _ = await handle(state, registry, principal.owner, response_id)
    if (await run.state()).live:
        raise ResponseInProgress(
            f"The response '{response_id}' is still running; cancel it first "
            f"(POST /v1/responses/{response_id}/cancel)."
        )
    await Turns(state.database).delete(principal.owner, run.id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


@router.get(
    "/responses/{response_id}/input_items",
    response_model=None,
    responses=openai_errors({404: "No such response of yours."}),
    summary="OpenAI Responses: the input a response answered",
)
async def list_input_items(
    response_id: Text,
    principal: PrincipalDep,
    state: State,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Text | None = None,
) -> Response:
    message_id = message_id_of(response_id)
    turn = await Turns(state.database).get(principal.owner, message_id) if message_id else None
    if turn is None:
        raise NotFound(f"No response with id '{response_id}'.")
    items = [input_item(row) for row in turn.inputs]
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return JSONResponse(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )


@router.post(
    "/responses/compact",
    response_model=None,
    responses=openai_errors({400: "Not supported here."}),
    summary="OpenAI Responses: compaction (not supported)",
)
async def compact_response() -> Response:
    raise CompactionUnsupported(
        "POST /v1/responses/compact is not supported by chatstream: compact the "
        "conversation on the client, or continue it with previous_response_id (the "
        "session keeps its history, windowed by CHATSTREAM_HISTORY_MESSAGES)."
    )
