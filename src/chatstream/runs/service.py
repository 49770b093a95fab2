"""Starting a chat: the one path every transport (HTTP, SSE, WebSocket) goes through.

    request ─ limits ─ admission ─ commit user message ─ context ─ Run ─ registry

Nothing is written before every check that can fail cheaply has passed, and
the run's slot is reserved before the user message is committed, so a
refused chat leaves no trace.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

import anyio
from pydantic import BaseModel, ConfigDict, Field

from chatstream.auth import Principal
from chatstream.config import Settings
from chatstream.errors import ChatstreamError, Conflict, IdempotencyConflict, InvalidRequest
from chatstream.ratelimit import ChatLimits, RateWindow
from chatstream.runs.context import build_context
from chatstream.runs.handle import RunHandle
from chatstream.runs.lifecycle import RunListeners
from chatstream.runs.log import EventLog, MemoryEventLog
from chatstream.runs.registry import LocalRunRegistry
from chatstream.runs.replay import StoredRun
from chatstream.runs.run import Run, RunLimits, RunSpec, RunStore
from chatstream.storage.records import HistoryMessage, OutputRow, RunOutput
from chatstream.storage.repository import DuplicateRequest, EarlierRequest, Store
from chatstream.tools import ToolSet
from chatstream.upstream.stream import ChatUpstream

SYSTEM_PROMPT_MAX_CHARS = 32_000


class ChatRequest(BaseModel):
    """The body of `POST /api/chat/stream`, `POST /api/chat` and the WebSocket `chat` frame."""

    model_config = ConfigDict(extra="forbid")

    message: Annotated[
        str,
        Field(
            min_length=1,
            # At least one character that is not whitespace. Spelled out because a
            # bare `\S` means two things: JSON Schema's (ECMA-262) whitespace lacks
            # U+0085 and the validator's (Unicode) lacks U+FEFF; this class is the
            # same set in both, so what the schema promises is what is accepted.
            pattern=r"[^\s\u0085\uFEFF]",
            description="The user's message: 1 to CHATSTREAM_MAX_MESSAGE_CHARS characters, "
            "not only whitespace.",
        ),
    ]
    session_id: uuid.UUID | None = Field(
        default=None, description="Continue this session; absent: a new session is created."
    )
    model: str | None = Field(default=None, description="One of `GET /api/models`.")
    system_prompt: Annotated[str, Field(max_length=SYSTEM_PROMPT_MAX_CHARS)] | None = Field(
        default=None, description="Used when a new session is created."
    )
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="1 to CHATSTREAM_MAX_TOKENS (also the default)."
    )
    client_message_id: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        default=None,
        description="Idempotency key, unique per owner: a repeat starts no second run.",
    )
    chunk_chars: Annotated[int, Field(ge=1, le=4096)] | None = Field(
        default=None,
        description="Coalesce `delta` text into pieces of at least this many characters.",
    )


# How long a repeated request waits for the run the first one is launching.
REPEAT_WAIT_S = 2.0


@dataclass(frozen=True, slots=True)
class TurnShape:
    """What a protocol adapter asks of a turn beyond the chat request (all optional).

    `chat_id`: a new session is named by the client's own chat id (the AI
    SDK's). `earlier`: a new session starts with these user and assistant
    messages, oldest first, before the new one (the OpenAI facade's given
    context). `reanswer`: answer this stored user message of
    `request.session_id` again, with the history up to it; nothing new is
    inserted (the AI SDK's regenerate).
    """

    chat_id: str | None = None
    earlier: tuple[HistoryMessage, ...] = ()
    reanswer: uuid.UUID | None = None


PLAIN_TURN = TurnShape()


@dataclass(frozen=True, slots=True)
class StartedRun:
    run: RunHandle  # a new run, or the one an earlier request with the same key started
    window: RateWindow | None  # for the X-RateLimit-* headers of the answer


class ChatService:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        registry: LocalRunRegistry,
        upstream: ChatUpstream,
        tools: ToolSet,
        limits: ChatLimits,
        journal: RunStore,
        runner: str,
        listeners: RunListeners | None = None,
        log_for: Callable[[RunSpec], EventLog] | None = None,
    ) -> None:
        # Each run's event log: in memory, or mirrored to Redis for other instances.
        self._log_for = log_for or (lambda spec: MemoryEventLog())
        self._settings = settings
        self._listeners = listeners or RunListeners()
        self._journal = journal
        self._runner = runner
        self._tools = tools
        self._store = store
        self._registry = registry
        self._upstream = upstream
        self._limits = limits
        self._run_limits = RunLimits(
            first_token_timeout_s=settings.upstream_first_token_timeout_s,
            idle_timeout_s=settings.upstream_idle_timeout_s,
            max_duration_s=settings.max_run_duration_s,
            thinking_interval_s=settings.thinking_interval_s,
            on_disconnect=settings.on_disconnect,
            max_tool_rounds=settings.max_tool_rounds,
            tool_timeout_s=settings.tool_timeout_s,
        )

    def check(self, request: ChatRequest) -> None:
        """The rules that depend on settings; same error shape as schema validation."""
        settings = self._settings
        problems: list[dict[str, Any]] = []
        if len(request.message) > settings.max_message_chars:
            problems.append(
                _problem(
                    "message", f"at most {settings.max_message_chars} characters", "string_too_long"
                )
            )
        if request.max_tokens is not None and request.max_tokens > settings.max_tokens:
            problems.append(
                _problem("max_tokens", f"at most {settings.max_tokens}", "less_than_equal")
            )
        if request.model is not None and request.model not in settings.models:
            problems.append(_problem("model", "not one of GET /api/models", "enum"))
        if problems:
            raise InvalidRequest("The chat request is not valid.", details=problems)

    async def start(
        self, principal: Principal, request: ChatRequest, shape: TurnShape = PLAIN_TURN
    ) -> StartedRun:
        """Start a run, or refuse it (invalid, limited, at capacity) leaving no trace.

        A repeat of an earlier request (same `client_message_id`) starts
        nothing and costs no limit: it answers with the earlier run. A chat
        refused for any reason but the caller's own rate (unknown session,
        database down, server at capacity) costs nothing from the window:
        the window is tested first and charged only once the chat is real.
        """
        self.check(request)
        owner, key = principal.owner, principal.limit_key
        if request.client_message_id is not None:
            earlier = await self._store.find_request(owner, request.client_message_id)
            if earlier is not None:
                return await self._repeat(principal, earlier, request.message)
        run_id = uuid.uuid4()
        try:
            await self._limits.take_slot(key, run_id)
        except ChatstreamError as exc:
            self._listeners.chat_rejected(exc.code)
            window = await self._limits.peek_window(key)
            if window is not None:
                exc.headers.update(window.headers())
            raise
        try:
            try:
                await self._limits.check_window(key)
                admission = self._registry.admit(owner)
            except ChatstreamError as exc:
                self._listeners.chat_rejected(exc.code)
                raise
            try:
                # Committing the user message and launching its run happen
                # together or not at all: a request cancelled in between (a
                # socket closing) would leave an idempotency key whose answer
                # never comes. The database's own timeouts bound the wait.
                with anyio.CancelScope(shield=True):
                    run = await self._begin(principal, request, run_id, shape)
                    admission.start(run)
            except BaseException:
                admission.release()
                raise
        except BaseException as exc:
            await self._limits.give_back_slot(key, run_id)
            if not isinstance(exc, DuplicateRequest):
                raise
            # A concurrent repeat won the race to the unique index.
            assert request.client_message_id is not None
            earlier = await self._store.find_request(owner, request.client_message_id)
            if earlier is None:
                raise Conflict("That client_message_id is in use.") from None
            return await self._repeat(principal, earlier, request.message)
        return StartedRun(run, await self._limits.charge_window(key))

    async def _begin(
        self, principal: Principal, request: ChatRequest, run_id: uuid.UUID, shape: TurnShape
    ) -> Run:
        """Commit the user's message and build its run (not launched yet)."""
        settings = self._settings
        owner, key = principal.owner, principal.limit_key
        turn = await self._store.begin_turn(
            owner,
            session_id=request.session_id,
            new_session_model=request.model,
            new_session_system_prompt=request.system_prompt,
            message=request.message,
            # Room for rows the context builder skips (failed empty answers).
            history_limit=settings.history_messages * 2,
            reply_id=run_id,
            runner=self._runner,
            client_message_id=request.client_message_id,
            new_session_external_id=shape.chat_id,
            earlier=shape.earlier,
            reanswer=shape.reanswer,
            title_from_message=settings.auto_title == "message",
        )
        session_model = turn.session_model if turn.session_model in settings.models else None
        spec = RunSpec(
            owner=owner,
            session_id=turn.session_id,
            message_id=run_id,
            user_message_id=turn.user_message_id,
            model=request.model or session_model or settings.default_model,
            messages=build_context(
                turn.system_prompt,
                turn.history,
                max_messages=settings.history_messages,
                max_chars=settings.history_chars,
            ),
            max_tokens=request.max_tokens or settings.max_tokens,
            temperature=request.temperature,
            chunk_chars=request.chunk_chars,
            tools=self._tools,
        )
        return Run(
            spec,
            upstream=self._upstream,
            store=self._journal,
            limits=self._run_limits,
            on_end=partial(self._limits.give_back_slot, key, run_id),
            log=self._log_for(spec),
        )

    async def _repeat(
        self, principal: Principal, earlier: EarlierRequest, message: str
    ) -> StartedRun:
        """The run an earlier request with the same key started: live, retained, or saved.

        A reply that was never launched (its request was cut off between the
        commit and the launch, before that could not happen) is finished now,
        as `interrupted`, so that the key is answered rather than stuck.
        """
        if message != earlier.message:
            raise IdempotencyConflict()
        window = await self._limits.peek_window(principal.limit_key)
        run: RunHandle | None = None
        with anyio.move_on_after(REPEAT_WAIT_S):
            run = await self._registry.launched(earlier.reply_id, principal.owner)
        if run is not None:
            return StartedRun(run, window)
        rows = await self._store.run_rows(principal.owner, earlier.reply_id)
        if not rows:
            unanswered = OutputRow(
                id=earlier.reply_id, role="assistant", content="", status="interrupted"
            )
            if await self._journal.save(
                RunOutput(principal.owner, earlier.session_id, rows=[unanswered])
            ):
                rows = [unanswered]
        if rows:
            return StartedRun(StoredRun(earlier.session_id, earlier.user_message_id, rows), window)
        raise Conflict(
            "That request's answer could not be saved yet; try again shortly.",
            retry_after=1,
            details={"message_id": str(earlier.reply_id), "session_id": str(earlier.session_id)},
        )


def _problem(field: str, message: str, kind: str) -> dict[str, Any]:
    return {"loc": ["body", field], "msg": message, "type": kind}
