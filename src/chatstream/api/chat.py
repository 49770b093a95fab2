"""`POST /api/chat/stream` and `POST /api/chat`: start a run, stream it or await it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chatstream.api.deps import PrincipalDep, SettingsDep, StoreDep
from chatstream.api.errors import error_response
from chatstream.api.follow import follow_to_end
from chatstream.api.quota import GatedChatDep, GatedRun
from chatstream.api.schemas import (
    ChatRequest,
    ChatResponse,
    ErrorBody,
    MessageOut,
    json_errors,
    sse_responses,
)
from chatstream.api.sse import RunEventStream
from chatstream.config import Settings
from chatstream.errors import DatabaseUnavailable, failed_run_status
from chatstream.runs.events import DoneEvent, ErrorEvent, Event
from chatstream.runs.handle import RunHandle
from chatstream.storage.models import utcnow
from chatstream.storage.repository import Store

router = APIRouter(prefix="/api", tags=["chat"])

_ERROR_TEXTS = {
    401: "Auth is on and the bearer token is missing or not valid.",
    404: "`session_id` is not one of your sessions.",
    409: "`idempotency_conflict`: this `client_message_id` was already used with another "
    "`message`; or `run_in_progress`: a run is live in `session_id` (its `message_id` in "
    "`details`) and `if_busy` is `reject`.",
    413: "The body is over CHATSTREAM_MAX_BODY_BYTES.",
    422: "The request breaks a validation rule.",
    429: "`rate_limited` (CHATSTREAM_RATE_LIMIT), `too_many_runs` "
    "(CHATSTREAM_MAX_CONCURRENT_RUNS) or `quota_exceeded` (CHATSTREAM_QUOTA_TOKENS); with "
    "Retry-After and X-RateLimit-* (X-Quota-*) headers.",
    503: "`unavailable` (this process is at CHATSTREAM_MAX_LIVE_RUNS), `server_shutdown`, "
    "`database_unavailable` or `rate_limiter_unavailable`; retry after Retry-After.",
}
_ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody, "description": text} for status, text in _ERROR_TEXTS.items()
}


# Status of `POST /api/chat` when the run did not complete, by error code.
@router.post(
    "/chat/stream",
    response_class=RunEventStream,
    status_code=200,
    responses={**sse_responses(), **json_errors(_ERROR_TEXTS)},
    summary="Start a run and stream its events (SSE)",
)
async def chat_stream(
    body: ChatRequest, principal: PrincipalDep, chat: GatedChatDep, settings: SettingsDep
) -> Response:
    return event_stream(await chat.start(principal, body.to_input()), settings)


def event_stream(started: GatedRun, settings: Settings) -> Response:
    """A started run's events, from its `start`, as SSE."""
    return RunEventStream(
        started.run,
        after=0,
        keepalive_s=settings.keepalive_interval_s,
        send_timeout_s=settings.send_timeout_s,
        headers=started.headers,
    )


@router.post(
    "/chat",
    response_model=ChatResponse,
    responses={
        **_ERRORS,
        502: {
            "model": ErrorBody,
            "description": "The model server failed; the partial answer is saved.",
        },
        504: {
            "model": ErrorBody,
            "description": "The model server timed out; the partial answer is saved.",
        },
    },
    summary="Start a run and answer once it has ended",
)
async def chat(
    body: ChatRequest,
    principal: PrincipalDep,
    chat: GatedChatDep,
    store: StoreDep,
    request: Request,
) -> Response:
    started = await chat.start(principal, body.to_input())
    return await final_answer(started, principal.owner, store, request)


async def final_answer(started: GatedRun, owner: str, store: Store, request: Request) -> Response:
    """A started run's answer once it has ended, as JSON (an error status if it failed)."""
    run = started.run
    outcome = _Outcome()
    await follow_to_end(run, request, outcome.read)
    if outcome.done is None:
        return Response(status_code=499)  # the client left; nobody reads this
    response = await _final_answer(run, outcome, owner, store)
    response.headers.update(started.headers)
    return response


@dataclass(slots=True)
class _Outcome:
    """What a run's events say of its answer: the final text (after its last tool), how it ended."""

    model: str | None = None
    question: uuid.UUID | None = None  # the message answered
    parts: list[str] = field(default_factory=list)
    error: ErrorEvent | None = None
    done: DoneEvent | None = None

    def read(self, batch: list[Event]) -> None:
        for event in batch:
            data = event.data
            if data["type"] == "start":
                self.model = data["model"]
                self.question = uuid.UUID(data["user_message_id"])
            elif data["type"] == "delta":
                self.parts.append(data["text"])
            elif data["type"] == "tool_result":
                self.parts.clear()  # that text belongs to the tool round's own row
                self.question = None  # the answer follows the round's rows (their ids unsaid)
            elif data["type"] == "error":
                self.error = data
            elif data["type"] == "done":
                self.done = data

    def message(self, run: RunHandle) -> MessageOut:
        done = self.done
        assert done is not None, "read to the end"
        return MessageOut(
            id=run.id,
            session_id=run.session_id,
            role="assistant",
            content="".join(self.parts),
            status=done["status"],
            model=self.model,
            finish_reason=done["finish_reason"],
            tool_calls=None,
            usage=dict(done["usage"]) if done["usage"] else None,
            metrics=dict(done["metrics"]) if done["metrics"] else None,
            created_at=utcnow(),
            parent_id=self.question,
        )


async def _final_answer(run: RunHandle, outcome: _Outcome, owner: str, store: Store) -> Response:
    try:
        row = await store.get_message(owner, run.id)
    except DatabaseUnavailable:
        row = None
    # Not in the database (it was unreachable; the spool keeps the answer):
    # answer with what the run streamed, so the client has no reason to send again.
    message = MessageOut.model_validate(row) if row is not None else outcome.message(run)
    persisted = row is not None
    error = outcome.error
    if error is None:
        payload = ChatResponse(session_id=run.session_id, message=message, persisted=persisted)
        return JSONResponse(payload.model_dump(mode="json"))
    return error_response(
        failed_run_status(error["code"]),
        error["code"],
        error["message"],
        details={
            "session_id": str(run.session_id),
            "message": message.model_dump(mode="json"),
            "persisted": persisted,
        },
    )
