"""Edit a user message, answer a message again, switch the branch a session shows.

    POST /api/sessions/{id}/messages/{message_id}/edit         a new user message beside
                                                              `message_id`, and its run
    POST /api/sessions/{id}/messages/{message_id}/regenerate   a new answer beside the
                                                              earlier ones
    PUT  /api/sessions/{id}/active-branch                     show (and continue) the
                                                              branch through a message

Nothing is ever overwritten: an edit and a regeneration add a sibling (a
message with the same parent) and make its branch the active one; every
earlier branch stays, reachable through `sibling_ids`. Both start their run
through the same path as `POST /api/chat` (validation, quota, rate limits,
the session's one live run and `if_busy`), and answer as it does: JSON once
the run has ended, or (`stream: true`) its events as they come.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.requests import Request
from starlette.responses import Response

from chatstream.api.branch_schemas import (
    ActiveBranchRequest,
    EditRequest,
    MessagePage,
    RegenerateRequest,
    RunOptions,
)
from chatstream.api.chat import event_stream, final_answer
from chatstream.api.deps import (
    BranchesDep,
    ChatDep,
    Owner,
    PrincipalDep,
    SettingsDep,
    StoreDep,
)
from chatstream.api.quota import GatedChatDep, GatedRun
from chatstream.api.schemas import ChatResponse, json_errors, sse_responses
from chatstream.api.sessions import branch_page
from chatstream.errors import NotAUserMessage, NothingToRegenerate
from chatstream.runs.service import TurnShape
from chatstream.storage.records import Parent

router = APIRouter(prefix="/api/sessions", tags=["sessions"])


_RUN_ERRORS = {
    404: "`not_found`: `session_id` is not one of your sessions, or `message_id` is not a "
    "message of it.",
    409: "`run_in_progress`: a run is live in the session (its `message_id` in `details`) and "
    "`if_busy` is `reject`; or `idempotency_conflict` (an edit's `client_message_id`).",
    413: "The body is over CHATSTREAM_MAX_BODY_BYTES.",
    429: "`rate_limited`, `too_many_runs` or `quota_exceeded`, as for `POST /api/chat`; with "
    "Retry-After and X-RateLimit-* (X-Quota-*) headers.",
    503: "`unavailable`, `server_shutdown`, `database_unavailable` or "
    "`rate_limiter_unavailable`; retry after Retry-After.",
    502: "`stream: false`: the model server failed; the partial answer is saved.",
    504: "`stream: false`: the model server timed out; the partial answer is saved.",
}


def _run_responses(invalid: str) -> dict[int | str, dict[str, Any]]:
    """An answer as `POST /api/chat` gives it (JSON), or as `POST /api/chat/stream` (SSE)."""
    streamed = sse_responses()[200]
    return {
        200: {
            "description": "`stream: false` (the default): the answer once its run has ended, "
            "as `POST /api/chat` gives it (`message.parent_id` is the message it answers). "
            "`stream: true`: the run's events, as `POST /api/chat/stream` streams them. "
            + streamed["description"],
            "content": streamed["content"],
        },
        **json_errors({**_RUN_ERRORS, 422: invalid}),
    }


def _a(role: str) -> str:
    return f"an {role}" if role[0] in "aeiou" else f"a {role}"


async def _answer(
    started: GatedRun,
    options: RunOptions,
    *,
    owner: str,
    store: StoreDep,
    settings: SettingsDep,
    request: Request,
) -> Response:
    if options.stream:
        return event_stream(started, settings)
    return await final_answer(started, owner, store, request)


@router.post(
    "/{session_id}/messages/{message_id}/edit",
    response_model=ChatResponse,
    responses=_run_responses(
        "`not_a_user_message`: only a user message is edited (answer again with `regenerate`)."
    ),
    summary="Edit a user message: its new text beside it as a new branch, and its answer",
)
async def edit_message(
    session_id: uuid.UUID,
    message_id: uuid.UUID,
    body: EditRequest,
    principal: PrincipalDep,
    chat: GatedChatDep,
    branches: BranchesDep,
    store: StoreDep,
    settings: SettingsDep,
    request: Request,
) -> Response:
    """The new text becomes a new user message beside `message_id` (a sibling: the same
    parent), and is answered with the branch up to it as context; the session's active
    branch is now that one. The message edited and everything that followed it are
    kept: switch back with `PUT /api/sessions/{id}/active-branch`."""
    owner = principal.owner
    edited = await branches.message(owner, session_id, message_id)
    if edited.role != "user":
        raise NotAUserMessage(
            f"Message {message_id} is {_a(edited.role)} message; only a user message can be "
            "edited. To have an answer generated again, POST .../regenerate.",
            details=[{"loc": ["path", "message_id"], "msg": "not a user message"}],
        )
    chat_input = body.to_input(session_id, body.content, body.client_message_id)
    # The new message is the edited one's sibling: it follows what that one followed.
    shape = TurnShape(parent=Parent(edited.parent_id))
    started = await chat.start(principal, chat_input, shape)
    return await _answer(
        started, body, owner=owner, store=store, settings=settings, request=request
    )


@router.post(
    "/{session_id}/messages/{message_id}/regenerate",
    response_model=ChatResponse,
    responses=_run_responses(
        "`nothing_to_regenerate`: no user message (or tool result) is at or before "
        "`message_id` on its branch (a context given as it was, through `/v1`)."
    ),
    summary="Answer again: a new answer beside the earlier ones, which are kept",
)
async def regenerate(
    session_id: uuid.UUID,
    message_id: uuid.UUID,
    principal: PrincipalDep,
    chat: GatedChatDep,
    branches: BranchesDep,
    store: StoreDep,
    settings: SettingsDep,
    request: Request,
    body: RegenerateRequest | None = None,
) -> Response:
    """`message_id` is an answer (any row of its run) or the user message (or client tool
    results) it answers. The model is given the branch up to that message, as context,
    with the run options of the body (none: the defaults); the new answer becomes a
    sibling of the earlier ones (which are kept, and listed in its `sibling_ids`) and
    ends the session's active branch. The body may be left out."""
    options = body or RegenerateRequest()
    owner = principal.owner
    question = await branches.question_of(owner, session_id, message_id)
    if question is None:
        raise NothingToRegenerate(
            f"Message {message_id} answers no message of yours: no user message (or tool "
            "result) is at or before it on its branch.",
            details=[{"loc": ["path", "message_id"], "msg": "nothing to answer again"}],
        )
    chat_input = options.to_input(session_id, question.content)
    started = await chat.start(principal, chat_input, TurnShape(reanswer=question.id))
    return await _answer(
        started, options, owner=owner, store=store, settings=settings, request=request
    )


@router.put(
    "/{session_id}/active-branch",
    response_model=MessagePage,
    responses={
        200: {"description": "The session's new active branch, its newest page."},
        **json_errors(
            {
                404: "`not_found`: `session_id` is not one of your sessions, or `message_id` "
                "is not a message of it.",
                422: "The request breaks a validation rule.",
            }
        ),
    },
    summary="Switch branch: show and continue the branch through a message",
)
async def set_active_branch(
    session_id: uuid.UUID,
    body: ActiveBranchRequest,
    owner: Owner,
    branches: BranchesDep,
    store: StoreDep,
    chat: ChatDep,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size of the answer.")] = 50,
) -> MessagePage:
    """The session's active leaf becomes the most recent message at or under
    `message_id`; the answer is the new active branch, as `GET .../messages` lists it.
    The next message, and the model's context, follow that branch. Watchers of the
    session (`GET /api/sessions/{id}/events`, on any instance) are told `session.updated`."""
    await branches.activate(owner, session_id, body.message_id)
    session, _ = await store.get_session(owner, session_id)
    chat.live.events.session_updated(session_id, session)  # another tab reloads the branch
    return await branch_page(branches, owner, session_id, limit=limit)
