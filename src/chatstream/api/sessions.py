"""Sessions and their messages, the caller's only."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from chatstream.api.branch_schemas import BranchMessageOut, MessagePage
from chatstream.api.deps import BranchesDep, ChatDep, Owner, RegistryDep, SettingsDep, StoreDep
from chatstream.api.schemas import (
    ActiveRun,
    ErrorBody,
    SessionCreate,
    SessionDetail,
    SessionOut,
    SessionPage,
    SessionPatch,
    json_errors,
    session_events_responses,
)
from chatstream.api.session_stream import SessionEventStream
from chatstream.config import Settings
from chatstream.errors import InvalidRequest, NotFound
from chatstream.runs.session_events import SessionUpdatedEvent, session_updated_event
from chatstream.runs.session_gate import LiveSessions
from chatstream.storage.branches import Branches
from chatstream.storage.cursors import CURSOR_PATTERN

router = APIRouter(prefix="/api/sessions", tags=["sessions"])

Limit = Annotated[int, Query(ge=1, le=200, description="Page size, 1 to 200.")]

_NOT_FOUND: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorBody, "description": "No such session of yours."}
}
_INVALID: dict[int | str, dict[str, object]] = {
    422: {"model": ErrorBody, "description": "The request breaks a validation rule."}
}


def _with_active_run(session: SessionOut, active: dict[uuid.UUID, uuid.UUID]) -> SessionOut:
    run_id = active.get(session.id)
    if run_id is not None:
        session.active_run = ActiveRun(message_id=run_id)
    return session


async def _active_run(live: LiveSessions, owner: str, session_id: uuid.UUID) -> ActiveRun | None:
    run_id = (await live.active(owner, [session_id])).get(session_id)
    return ActiveRun(message_id=run_id) if run_id is not None else None


def _check_model(model: str | None, settings: Settings) -> None:
    if model is not None and model not in settings.models:
        raise InvalidRequest(
            "The request is not valid.",
            details=[
                {"loc": ["body", "model"], "msg": "not one of GET /api/models", "type": "enum"}
            ],
        )


@router.post(
    "", status_code=201, response_model=SessionOut, responses=_INVALID, summary="Create a session"
)
async def create_session(
    body: SessionCreate, owner: Owner, store: StoreDep, settings: SettingsDep
) -> SessionOut:
    _check_model(body.model, settings)
    row = await store.create_session(
        owner, title=body.title, model=body.model, system_prompt=body.system_prompt
    )
    return SessionOut.model_validate(row)


@router.get(
    "",
    response_model=SessionPage,
    responses=_INVALID,
    summary="Your sessions, most recently active first",
)
async def list_sessions(
    owner: Owner,
    store: StoreDep,
    chat: ChatDep,
    limit: Limit = 50,
    cursor: Annotated[
        str | None,
        Query(pattern=CURSOR_PATTERN, description="`next_cursor` of the previous page."),
    ] = None,
) -> SessionPage:
    page = await store.list_sessions(owner, limit=limit, cursor=cursor)
    active = await chat.live.active(owner, [row.id for row in page.items])
    return SessionPage(
        items=[_with_active_run(SessionOut.model_validate(row), active) for row in page.items],
        next_cursor=page.next_cursor,
    )


@router.get(
    "/{session_id}", response_model=SessionDetail, responses=_NOT_FOUND, summary="One session"
)
async def get_session(
    session_id: uuid.UUID, owner: Owner, store: StoreDep, chat: ChatDep
) -> SessionDetail:
    row, count = await store.get_session(owner, session_id)
    session = SessionOut.model_validate(row)
    session.active_run = await _active_run(chat.live, owner, session_id)
    return SessionDetail.model_validate({**session.model_dump(), "message_count": count})


@router.patch(
    "/{session_id}",
    response_model=SessionOut,
    responses={**_NOT_FOUND, **_INVALID},
    summary="Change title, system_prompt or model",
)
async def update_session(
    session_id: uuid.UUID,
    body: SessionPatch,
    owner: Owner,
    store: StoreDep,
    settings: SettingsDep,
    chat: ChatDep,
) -> SessionOut:
    _check_model(body.model, settings)
    changes = body.model_dump(exclude_unset=True)
    row = await store.update_session(owner, session_id, changes)
    session = SessionOut.model_validate(row)
    chat.live.events.session_updated(session_id, session)
    session.active_run = await _active_run(chat.live, owner, session_id)
    return session


@router.delete(
    "/{session_id}",
    status_code=204,
    responses=_NOT_FOUND,
    summary="Delete a session and its messages; its live runs are cancelled",
)
async def delete_session(
    session_id: uuid.UUID, owner: Owner, store: StoreDep, registry: RegistryDep, chat: ChatDep
) -> Response:
    await store.delete_session(owner, session_id)
    chat.live.events.publish(session_id, {"type": "session.deleted", "session_id": str(session_id)})
    # Deleted first: its live runs, cancelled now, find nowhere to write
    # (`done`: cancelled, persisted false) and spool nothing.
    for run in await registry.live_in_session(session_id, owner):
        await run.cancel()
    return Response(status_code=204)


@router.get(
    "/{session_id}/messages",
    response_model=MessagePage,
    responses={**_NOT_FOUND, **_INVALID},
    summary="A session's active branch, oldest first, paged backwards with `before`",
    response_description="The newest `limit` messages of the active branch (before `before`).",
)
async def list_messages(
    session_id: uuid.UUID,
    owner: Owner,
    branches: BranchesDep,
    limit: Limit = 50,
    before: Annotated[
        uuid.UUID | None, Query(description="`next_cursor` of the previous page.")
    ] = None,
) -> MessagePage:
    """Messages form a tree: each follows its `parent_id`, and the edits of a message and
    the regenerations of an answer are siblings (the same parent). Listed is the session's
    active branch, from a first message to its active leaf, the path the next message
    continues and the model is given as context. Each message says which versions it has
    (`sibling_ids`, `sibling_index`, `sibling_count`); show another with
    `PUT /api/sessions/{id}/active-branch`."""
    return await branch_page(branches, owner, session_id, limit=limit, before=before)


async def branch_page(
    branches: Branches,
    owner: str,
    session_id: uuid.UUID,
    *,
    limit: int,
    before: uuid.UUID | None = None,
) -> MessagePage:
    page = await branches.page(owner, session_id, limit=limit, before=before)
    return MessagePage(
        items=[BranchMessageOut.of(item) for item in page.items], next_cursor=page.next_cursor
    )


@router.get(
    "/{session_id}/events",
    response_class=SessionEventStream,
    status_code=200,
    responses={
        **session_events_responses(),
        **json_errors({404: "No such session of yours."}),
    },
    summary="Watch a session: its runs starting and ending, its changes (SSE)",
)
async def session_events(
    session_id: uuid.UUID, owner: Owner, store: StoreDep, chat: ChatDep, settings: SettingsDep
) -> Response:
    row, _ = await store.get_session(owner, session_id)  # 404 for anyone else's
    live = chat.live

    async def live_now() -> uuid.UUID | None:
        return (await live.active(owner, [session_id])).get(session_id)

    async def session_now() -> SessionUpdatedEvent | None:
        try:
            found, _ = await store.get_session(owner, session_id)
        except NotFound:
            return None
        return session_updated_event(session_id, found)

    return SessionEventStream(
        live.events,
        session_id,
        live_now,
        session_updated_event(session_id, row),
        session_now,
        keepalive_s=settings.keepalive_interval_s,
        send_timeout_s=settings.send_timeout_s,
    )
