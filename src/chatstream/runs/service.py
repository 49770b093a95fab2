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
from typing import Any, Protocol

import anyio

from chatstream.auth import Principal
from chatstream.config import Settings
from chatstream.errors import ChatstreamError, Conflict, IdempotencyConflict, InvalidChat, Problem
from chatstream.limiting.ratelimit import ChatLimits, RateWindow
from chatstream.runs.context import build_context
from chatstream.runs.handle import RunHandle, RunHost
from chatstream.runs.lifecycle import RunListeners
from chatstream.runs.log import EventLog, MemoryEventLog
from chatstream.runs.replay import StoredRun
from chatstream.runs.run import Run, RunLimits, RunSpec, RunStore
from chatstream.runs.session_events import SessionEvents
from chatstream.runs.session_gate import IfBusy, LiveSessions, RunInProgress, local_sessions
from chatstream.runs.spec import Passthrough
from chatstream.storage.records import HistoryMessage, OutputRow, Parent, RunOutput
from chatstream.storage.repository import DuplicateRequest, EarlierRequest, Store
from chatstream.tools import ToolSet
from chatstream.upstream.stream import ChatUpstream


@dataclass(frozen=True, slots=True)
class ChatInput:
    """One chat to start, whatever the transport (HTTP, WebSocket, a bot, an adapter).

    The transport has checked its shape; `ChatService.check` applies the
    rules that depend on settings.
    """

    message: str
    session_id: uuid.UUID | None = None
    model: str | None = None
    system_prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    client_message_id: str | None = None
    chunk_chars: int | None = None
    passthrough: Passthrough | None = None  # an OpenAI-compatible client's own request
    # While a run is live in `session_id` (`runs/session_gate.py`).
    if_busy: IfBusy = "reject"


NO_TEXT = "must contain some non-whitespace text"
NO_NUL = "must not contain NUL (U+0000) characters; remove them"

# How long a repeated request waits for the run the first one is launching.
REPEAT_WAIT_S = 2.0
# How long a session's turn may take to be settled (Redis; it expires by itself).
SETTLE_S = 2.0


@dataclass(frozen=True, slots=True)
class TurnShape:
    """What a protocol adapter asks of a turn beyond the chat request (all optional).

    `chat_id`: a new session is named by the client's own chat id (the AI
    SDK's). `earlier`: a new session starts with these user and assistant
    messages, oldest first, before the new one (the OpenAI facade's given
    context). `reanswer`: answer this stored user message of
    `chat.session_id` again (or its tool results), with its branch up to it
    as context; nothing new is inserted, the answer is a sibling of the
    earlier ones (regenerate). `parent`: the new message goes under this
    message instead of after the session's active leaf (an edit: a sibling
    of the message edited; a Responses `previous_response_id`).
    """

    chat_id: str | None = None
    earlier: tuple[HistoryMessage, ...] = ()
    reanswer: uuid.UUID | None = None
    # The new message when it is not the user's text: a tool result (after
    # `earlier`, the round's other results, in a session or a new one).
    turn: HistoryMessage | None = None
    parent: Parent | None = None
    # Kept on the new message as given (a Responses request's options, read back with it).
    request_options: dict[str, Any] | None = None


PLAIN_TURN = TurnShape()


@dataclass(frozen=True, slots=True)
class StartedRun:
    run: RunHandle  # a new run, or the one an earlier request with the same key started
    window: RateWindow | None  # for the X-RateLimit-* headers of the answer


class Started(Protocol):
    @property
    def run(self) -> RunHandle: ...


class ChatStarter(Protocol):
    """What starts a chat for a transport: the service itself, or it behind the quota gate."""

    async def start(self, principal: Principal, chat: ChatInput) -> Started: ...


class ChatService:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        registry: RunHost,
        upstream: ChatUpstream,
        tools: ToolSet,
        limits: ChatLimits,
        journal: RunStore,
        runner: str,
        listeners: RunListeners | None = None,
        log_for: Callable[[RunSpec], EventLog] | None = None,
        live: LiveSessions | None = None,
    ) -> None:
        # One live run per session; who watches sessions hears of their runs.
        self.live = live or local_sessions(
            SessionEvents(), registry, wait_s=settings.max_run_duration_s
        )
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

    def check(self, chat: ChatInput) -> None:
        """The rules every transport shares, some from settings; `InvalidChat` names each."""
        settings = self._settings
        problems: list[Problem] = []
        chars = settings.max_message_chars
        if not chat.message.strip():
            problems.append(Problem("message", NO_TEXT, "string_pattern_mismatch"))
        # The HTTP and WebSocket schemas refuse NUL already; a bot's text comes here as sent
        # (and PostgreSQL text cannot hold U+0000).
        for field, text in (("message", chat.message), ("system_prompt", chat.system_prompt)):
            if text is not None and "\x00" in text:
                problems.append(Problem(field, NO_NUL, "nul_character"))
        if len(chat.message) > chars:
            problems.append(Problem("message", f"at most {chars} characters", "string_too_long"))
        if chat.max_tokens is not None and chat.max_tokens > settings.max_tokens:
            problems.append(
                Problem("max_tokens", f"at most {settings.max_tokens}", "less_than_equal")
            )
        if chat.model is not None and chat.model not in settings.models:
            problems.append(Problem("model", "not one of GET /api/models", "enum"))
        if problems:
            raise InvalidChat(problems)

    async def start(
        self, principal: Principal, chat: ChatInput, shape: TurnShape = PLAIN_TURN
    ) -> StartedRun:
        """Start a run, or refuse it (invalid, limited, at capacity, its session busy and
        `if_busy` `reject`) leaving no trace.

        A repeat of an earlier request (same `client_message_id`) starts
        nothing and costs no limit: it answers with the earlier run. A chat
        refused for any reason but the caller's own rate (unknown session,
        database down, server at capacity) costs nothing from the window:
        the window is tested first and charged only once the chat is real.
        """
        self.check(chat)
        owner = principal.owner
        if chat.client_message_id is not None:
            earlier = await self._store.find_request(owner, chat.client_message_id)
            if earlier is not None:
                return await self._repeat(principal, earlier, chat.message)
        run_id = uuid.uuid4()
        if chat.session_id is None:
            return await self._launch(principal, chat, run_id, shape)
        try:
            await self.live.take_turn(owner, chat.session_id, run_id, chat.if_busy)
        except RunInProgress as exc:
            self._listeners.chat_rejected(exc.code)
            raise
        launched = False
        try:
            started = await self._launch(principal, chat, run_id, shape)
            launched = started.run.id == run_id
            return started
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(SETTLE_S):
                await self.live.gate.settle(chat.session_id, run_id, launched)

    async def _launch(
        self, principal: Principal, chat: ChatInput, run_id: uuid.UUID, shape: TurnShape
    ) -> StartedRun:
        """Start the run `run_id` (the session's turn is taken), or a repeat's answer."""
        owner, key = principal.owner, principal.limit_key
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
                    run = await self._begin(principal, chat, run_id, shape)
                    admission.start(run)
            except BaseException:
                admission.release()
                raise
        except BaseException as exc:
            await self._limits.give_back_slot(key, run_id)
            if not isinstance(exc, DuplicateRequest):
                raise
            # A concurrent repeat won the race to the unique index.
            assert chat.client_message_id is not None
            earlier = await self._store.find_request(owner, chat.client_message_id)
            if earlier is None:
                raise Conflict("That client_message_id is in use.") from None
            return await self._repeat(principal, earlier, chat.message)
        return StartedRun(run, await self._limits.charge_window(key))

    async def _begin(
        self, principal: Principal, chat: ChatInput, run_id: uuid.UUID, shape: TurnShape
    ) -> Run:
        """Commit the user's message and build its run (not launched yet)."""
        settings = self._settings
        owner, key = principal.owner, principal.limit_key
        turn = await self._store.begin_turn(
            owner,
            session_id=chat.session_id,
            new_session_model=chat.model,
            new_session_system_prompt=chat.system_prompt,
            message=chat.message,
            # Room for rows the context builder skips (failed empty answers).
            history_limit=settings.history_messages * 2,
            reply_id=run_id,
            runner=self._runner,
            client_message_id=chat.client_message_id,
            new_session_external_id=shape.chat_id,
            earlier=shape.earlier,
            reanswer=shape.reanswer,
            turn=shape.turn,
            parent=shape.parent,
            request_options=shape.request_options,
            title_from_message=settings.auto_title == "message",
        )
        session_model = turn.session_model if turn.session_model in settings.models else None
        spec = RunSpec(
            owner=owner,
            session_id=turn.session_id,
            message_id=run_id,
            user_message_id=turn.user_message_id,
            model=chat.model or session_model or settings.default_model,
            messages=build_context(
                turn.system_prompt,
                turn.history,
                max_messages=settings.history_messages,
                max_chars=settings.history_chars,
            ),
            max_tokens=chat.max_tokens or settings.max_tokens,
            temperature=chat.temperature,
            chunk_chars=chat.chunk_chars,
            tools=self._tools,
            answer_again=shape.reanswer is not None,
        )
        if chat.passthrough is not None:
            chat.passthrough.apply(spec)
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
                RunOutput(
                    principal.owner,
                    earlier.session_id,
                    rows=[unanswered],
                    parent_id=earlier.user_message_id,
                )
            ):
                rows = [unanswered]
        if rows:
            return StartedRun(StoredRun(earlier.session_id, earlier.user_message_id, rows), window)
        raise Conflict(
            "That request's answer could not be saved yet; try again shortly.",
            retry_after=1,
            details={"message_id": str(earlier.reply_id), "session_id": str(earlier.session_id)},
        )
