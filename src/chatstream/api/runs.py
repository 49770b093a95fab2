"""Follow, inspect and cancel runs by their `message_id`."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query
from starlette.responses import JSONResponse, Response

from chatstream.api.deps import Owner, RegistryDep, SettingsDep, StoreDep
from chatstream.api.schemas import CancelAccepted, ErrorBody, RunState, json_errors, sse_responses
from chatstream.api.sse import RunEventStream
from chatstream.errors import Conflict, InvalidRequest, NotFound, ServiceUnavailable

router = APIRouter(prefix="/api/runs", tags=["runs"])

_NOT_FOUND: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorBody, "description": "No such run of yours."}
}


@router.get(
    "/{message_id}/events",
    response_class=RunEventStream,
    status_code=200,
    responses={
        **sse_responses(),
        204: {
            "description": "The run has ended and has no event after `Last-Event-ID` "
            "(or `after`): nothing more will come, so stop reconnecting (a browser "
            "`EventSource` does, on any answer but 200)."
        },
        **json_errors(
            {
                401: "Auth is on and the bearer token is missing or not valid.",
                404: "No such run of yours.",
                422: "`after` or `Last-Event-ID` is not a sequence number.",
            }
        ),
    },
    summary="Follow a run as SSE, from the start or after an event id",
)
async def follow_run(
    message_id: uuid.UUID,
    owner: Owner,
    registry: RegistryDep,
    settings: SettingsDep,
    after: Annotated[
        int | None, Query(ge=0, description="Replay only events with id > after.")
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(description="Set by EventSource on reconnect; wins over `after`."),
    ] = None,
) -> Response:
    run = await registry.get(message_id, owner)
    if run is None:
        raise NotFound("No such run (or it ended more than CHATSTREAM_RUN_RETENTION_S ago).")
    position = after or 0
    if last_event_id is not None and last_event_id.strip():
        try:
            position = int(last_event_id)
        except ValueError:
            raise InvalidRequest("Last-Event-ID must be an event id (an integer).") from None
        if position < 0:
            raise InvalidRequest("Last-Event-ID must not be negative.")
    state = await run.state()
    if not state.live and position >= state.last_seq:
        # An EventSource reconnects after every stream that ends, `done` or not;
        # any answer but 200 is what makes it stop.
        return Response(status_code=204)
    return RunEventStream(
        run,
        after=position,
        keepalive_s=settings.keepalive_interval_s,
        send_timeout_s=settings.send_timeout_s,
    )


@router.get(
    "/{message_id}",
    response_model=RunState,
    responses=_NOT_FOUND,
    summary="A run's state",
)
async def run_state(
    message_id: uuid.UUID, owner: Owner, registry: RegistryDep, store: StoreDep
) -> RunState:
    try:
        run = await registry.get(message_id, owner)
    except ServiceUnavailable:
        run = None  # other instances unreachable: the database still knows how it ended
    if run is not None:
        state = await run.state()
        return RunState(
            message_id=run.id,
            session_id=run.session_id,
            status=state.status or "running",
            last_seq=state.last_seq,
        )
    message = await store.get_message(owner, message_id)
    if message is None or message.role != "assistant":
        raise NotFound("No such run.")
    return RunState(
        message_id=message.id,
        session_id=message.session_id,
        status=message.status,
        last_seq=None,
    )


@router.post(
    "/{message_id}/cancel",
    status_code=202,
    response_model=CancelAccepted,
    responses={
        **_NOT_FOUND,
        409: {"model": ErrorBody, "description": "The run has already ended."},
    },
    summary="Stop a live run (its partial answer is saved as `cancelled`)",
)
async def cancel_run(
    message_id: uuid.UUID, owner: Owner, registry: RegistryDep, store: StoreDep
) -> Response:
    run = await registry.get(message_id, owner)
    if run is not None and await run.cancel():
        return JSONResponse(
            CancelAccepted(message_id=message_id).model_dump(mode="json"), status_code=202
        )
    if run is not None:
        raise Conflict("The run has already ended.")
    message = await store.get_message(owner, message_id)
    if message is not None and message.role == "assistant":
        raise Conflict("The run has already ended.")
    raise NotFound("No such run.")
