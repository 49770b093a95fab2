"""`/api/ui/chat`: the Vercel AI SDK UI message stream (`useChat`, `DefaultChatTransport`).

A thin adapter: the SDK's chat id names a session of the caller's, the last
user message starts a run through the same chat service as every other
transport, and the run's events are translated into the SDK's chunks
(`UIMessageStreamTranslation`, sans-I/O). Limits, ownership, persistence
and resumability are the core's.

    run events          UI message chunks
    start               start (messageId), start-step
    thinking            data-thinking (transient)
    reasoning           [text-end] [reasoning-start] reasoning-delta
    delta               [reasoning-end] [text-start] text-delta
    tool_call           [text-end] tool-input-available
    tool_result         tool-output-available [finish-step start-step, after a round's last]
    error               [text-end] error
    done                [text-end] finish-step finish | abort (cancelled)

([text-end] ends whichever part is open: text, or reasoning with reasoning-end.)
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path
from pydantic import ValidationError
from starlette.responses import Response

from chatstream.api.deps import BranchesDep, Owner, PrincipalDep, RegistryDep, SettingsDep, StoreDep
from chatstream.api.quota import GatedChatDep
from chatstream.api.schemas import ChatRequest, json_errors
from chatstream.api.translated_stream import TranslatedStream
from chatstream.api.ui_branches import edited, regenerated, replaces
from chatstream.api.ui_schemas import (
    FinishReason,
    UIChatRequest,
    UIMessage,
    UIMessageChunk,
    UIReasoningDeltaChunk,
    UIReasoningEndChunk,
    UIReasoningStartChunk,
    ui_stream_response,
)
from chatstream.api.validators import NO_NUL
from chatstream.config import Settings
from chatstream.errors import InvalidRequest, NotFound
from chatstream.runs.events import Event
from chatstream.runs.handle import RunHandle
from chatstream.runs.service import PLAIN_TURN, ChatInput, TurnShape

router = APIRouter(prefix="/api/ui", tags=["ai-sdk"])

UI_STREAM_HEADER = {"x-vercel-ai-ui-message-stream": "v1"}

_FINISH_REASONS: dict[str | None, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content-filter",
    "tool_calls": "tool-calls",
}


def _frame(chunk: UIMessageChunk) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _parsed(text: str) -> Any:
    """JSON text as its value; anything else as the text itself."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


class UIMessageStreamTranslation:
    """Run events → UI message stream frames, for one response (sans-I/O)."""

    __slots__ = ("_calls_open", "_delta_head", "_reasoning_id", "_text_id", "_texts")

    def __init__(self) -> None:
        self._text_id: str | None = None  # the open text part, if any
        self._reasoning_id: str | None = None  # the open reasoning part, if any
        self._delta_head = b""  # its text-delta frame up to the delta's value
        self._texts = 0  # parts opened so far (text and reasoning: their ids are unique)
        self._calls_open = 0  # tool calls of the current round still without a result

    def encode(self, batch: list[Event]) -> bytes:
        frames: list[bytes] = []
        for event in batch:
            if event.type == "delta" and self._text_id is not None:
                # The hot path, once per token: the same bytes `_frame` would make.
                text: str = event.data["text"]  # type: ignore[typeddict-item]
                frames.append(self._delta_head + orjson.dumps(text) + b"}\n\n")
            else:
                frames += self._translate(event)
        return b"".join(frames)

    def _close_text(self) -> list[bytes]:
        """End the open part: text or reasoning (at most one is open)."""
        if self._reasoning_id is not None:
            reasoning_id, self._reasoning_id = self._reasoning_id, None
            end: UIReasoningEndChunk = {"type": "reasoning-end", "id": reasoning_id}
            return [_frame(end)]
        if self._text_id is None:
            return []
        text_id, self._text_id = self._text_id, None
        return [_frame({"type": "text-end", "id": text_id})]

    def _reasoning(self, text: str) -> list[bytes]:
        frames = []
        if self._reasoning_id is None:
            frames = self._close_text()
            self._texts += 1
            self._reasoning_id = reasoning_id = f"reasoning-{self._texts}"
            start: UIReasoningStartChunk = {"type": "reasoning-start", "id": reasoning_id}
            frames.append(_frame(start))
        delta: UIReasoningDeltaChunk = {
            "type": "reasoning-delta",
            "id": self._reasoning_id,
            "delta": text,
        }
        frames.append(_frame(delta))
        return frames

    def _translate(self, event: Event) -> list[bytes]:
        data: Any = event.data
        kind = event.type
        if kind == "reasoning":
            return self._reasoning(data["text"])
        if kind == "delta":
            frames = []
            if self._text_id is None:
                frames = self._close_text()  # the reasoning before it, if any
                self._texts += 1
                self._text_id = f"text-{self._texts}"
                self._delta_head = _frame(
                    {"type": "text-delta", "id": self._text_id, "delta": ""}
                ).removesuffix(b'""}\n\n')
                frames.append(_frame({"type": "text-start", "id": self._text_id}))
            frames.append(
                _frame({"type": "text-delta", "id": self._text_id, "delta": data["text"]})
            )
            return frames
        if kind == "start":
            return [
                _frame({"type": "start", "messageId": data["message_id"]}),
                _frame({"type": "start-step"}),
            ]
        if kind == "thinking":
            return [
                _frame(
                    {
                        "type": "data-thinking",
                        "data": {"elapsed_ms": data["elapsed_ms"]},
                        "transient": True,
                    }
                )
            ]
        if kind == "tool_call":
            self._calls_open += 1
            return [
                *self._close_text(),
                _frame(
                    {
                        "type": "tool-input-available",
                        "toolCallId": data["call_id"],
                        "toolName": data["name"],
                        "input": _parsed(data["arguments"]),
                    }
                ),
            ]
        if kind == "tool_result":
            self._calls_open -= 1
            frames = [
                _frame(
                    {
                        "type": "tool-output-available",
                        "toolCallId": data["call_id"],
                        "output": _parsed(data["content"]),
                    }
                )
            ]
            if self._calls_open == 0:  # the round is over; the model's next one begins
                frames += [_frame({"type": "finish-step"}), _frame({"type": "start-step"})]
            return frames
        if kind == "error":
            return [*self._close_text(), _frame({"type": "error", "errorText": data["message"]})]
        if kind == "done":
            frames = self._close_text()
            if data["status"] == "cancelled":
                return [*frames, _frame({"type": "abort"})]
            reason: FinishReason = (
                _FINISH_REASONS.get(data["finish_reason"], "other")
                if data["status"] == "complete"
                else "error"
            )
            return [
                *frames,
                _frame({"type": "finish-step"}),
                _frame({"type": "finish", "finishReason": reason}),
            ]
        return []


# --- routes ----------------------------------------------------------------------


def _ui_stream(
    run: RunHandle, settings: Settings, *, cancel_on_disconnect: bool, headers: dict[str, str]
) -> TranslatedStream:
    return TranslatedStream(
        run,
        UIMessageStreamTranslation(),
        keepalive_s=settings.keepalive_interval_s,
        send_timeout_s=settings.send_timeout_s,
        headers={**UI_STREAM_HEADER, **headers},
        cancel_on_disconnect=cancel_on_disconnect,
    )


def _last_user_text(messages: list[UIMessage]) -> str:
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.role != "user":
            continue
        texts = [part.text for part in message.parts if part.type == "text" and part.text]
        if not texts:
            raise InvalidRequest(
                "The last user message has no text part; send its text as a `text` part.",
                details=[
                    {"loc": ["body", "messages", index, "parts"], "msg": "no text", "type": "text"}
                ],
            )
        return "\n".join(texts)
    raise InvalidRequest(
        "`messages` holds no user message to answer.",
        details=[{"loc": ["body", "messages"], "msg": "no user message", "type": "user_message"}],
    )


def _chat_request(**fields: Any) -> ChatInput:
    """A chat request from the SDK's fields; problems are reported against the SDK's body."""
    try:
        return ChatRequest(**fields).to_input()
    except ValidationError as exc:
        details = [
            {
                # The message came from `messages`; the other fields are the body's own.
                "loc": ["body", "messages"]
                if error["loc"][:1] == ("message",)
                else ["body", *error["loc"]],
                "msg": error["msg"],
                "type": error["type"],
            }
            for error in exc.errors()
        ]
        raise InvalidRequest("The chat request is not valid.", details=details) from None


_UI_ERRORS = {
    401: "Auth is on and the bearer token is missing or not valid.",
    404: "`regenerate-message` for a chat that has no question to answer again, or a "
    "`messageId` that is neither a message of the chat nor in `messages`.",
    409: "Another request is starting this same new chat at this moment; send again.",
    413: "The body is over CHATSTREAM_MAX_BODY_BYTES.",
    422: "`not_a_user_message`: `messageId` of `submit-message` names a stored answer; or "
    "`invalid_request`: no user message with text, or another rule broken.",
    429: "`rate_limited` (CHATSTREAM_RATE_LIMIT), `too_many_runs` "
    "(CHATSTREAM_MAX_CONCURRENT_RUNS) or `quota_exceeded` (CHATSTREAM_QUOTA_TOKENS); with "
    "Retry-After and X-RateLimit-* (X-Quota-*) headers.",
    503: "The server is at capacity or shutting down, or the database is unavailable.",
}


@router.post(
    "/chat",
    response_class=TranslatedStream,
    status_code=200,
    responses={200: ui_stream_response(), **json_errors(_UI_ERRORS)},
    summary="Start a run for the AI SDK's `useChat` and stream it as a UI message stream",
)
async def ui_chat(
    body: UIChatRequest,
    principal: PrincipalDep,
    chat: GatedChatDep,
    store: StoreDep,
    branches: BranchesDep,
    settings: SettingsDep,
) -> Response:
    owner = principal.owner
    session_id = await store.session_of_chat(owner, body.id)
    options: dict[str, Any] = {
        "model": body.model,
        "temperature": body.temperature,
        "max_tokens": body.max_tokens,
    }
    shape: TurnShape
    if body.trigger == "regenerate-message":
        if session_id is None:
            raise NotFound("This chat has no question to answer again.")
        text, shape = await regenerated(branches, owner, session_id, body)
        request = _chat_request(message=text, session_id=session_id, **options)
    else:
        request = _chat_request(
            message=_last_user_text(body.messages), session_id=session_id, **options
        )
        replaced = replaces(body)
        if session_id is None:
            shape = TurnShape(chat_id=body.id)
        elif replaced is not None:
            shape = await edited(branches, owner, session_id, body, replaced)
        else:
            shape = PLAIN_TURN
    started = await chat.start(principal, request, shape)
    return _ui_stream(
        started.run,
        settings,
        cancel_on_disconnect=not body.resume,
        headers=started.headers,
    )


@router.get(
    "/chat/{chat_id}/stream",
    response_class=TranslatedStream,
    status_code=200,
    responses={
        200: ui_stream_response(),
        204: {"description": "The chat has no live run (or is not one of yours)."},
        **json_errors({401: _UI_ERRORS[401], 503: "The database is unavailable."}),
    },
    summary="Resume the AI SDK stream of a chat's live run, from its start",
)
async def ui_chat_stream(
    chat_id: Annotated[str, Path(min_length=1, max_length=200), NO_NUL],
    owner: Owner,
    store: StoreDep,
    registry: RegistryDep,
    settings: SettingsDep,
) -> Response:
    session_id: uuid.UUID | None = await store.session_of_chat(owner, chat_id)
    live = await registry.live_in_session(session_id, owner) if session_id is not None else ()
    if not live:
        return Response(status_code=204)
    # A resumed stream never cancels the run: the request that started it decides.
    return _ui_stream(live[-1], settings, cancel_on_disconnect=False, headers={})
