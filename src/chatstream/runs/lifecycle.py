"""Who hears about runs starting, ending and being refused: metrics, post-run hooks, tracing.

    registry ── run_started(spec) ──────────────▶ listeners
    run ends ── run_finished(record) ───────────▶ (after the commit and after `done`)
    service ─── chat_rejected(code) ────────────▶ (a chat refused before its run began)

A listener is called synchronously on the event loop and must return at
once: anything slow (a hook, an export) it schedules on its own task group.
`RunListeners` fans out to several and isolates them: one that raises is
logged and the others, and the run, go on as if nothing happened.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Protocol

from chatstream.errors import ChatstreamError
from chatstream.runs.events import ErrorEvent, MessageStatus, Metrics, Usage
from chatstream.storage.records import OutputRow

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunStarted:
    owner: str
    session_id: uuid.UUID
    message_id: uuid.UUID
    model: str


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A finished run, as it was persisted (or spooled) and announced by `done`."""

    owner: str
    session_id: uuid.UUID
    message_id: uuid.UUID
    user_message_id: uuid.UUID
    model: str
    status: MessageStatus
    finish_reason: str | None
    persisted: bool
    usage: Usage | None
    metrics: Metrics
    error: ErrorEvent | None
    # Every row the run wrote, in order; the last is the final assistant answer.
    rows: list[OutputRow] = field(default_factory=list)
    # The chat's context as sent upstream (system prompt and history included).
    messages: list[dict[str, object]] = field(default_factory=list)
    # When it started and ended (wall clock, seconds since the epoch), and each
    # upstream call and tool execution within it: for traces, built after the fact.
    started_at: float = 0.0
    ended_at: float = 0.0
    steps: list[Step] = field(default_factory=list)

    @property
    def answer(self) -> str:
        return self.rows[-1].content if self.rows else ""


@dataclass(slots=True)
class Step:
    """One upstream call or one tool execution of a run, timed by the wall clock."""

    kind: Literal["upstream", "tool"]
    started_at: float
    ended_at: float = 0.0
    name: str = ""  # the tool's
    call_id: str = ""  # the tool call's
    # An upstream call's answer, as the model server reported it.
    response_model: str | None = None
    response_id: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    # Why it failed: an error code, `cancelled`, or an exception's type.
    error: str | None = None


class RunSteps:
    """Times a run's steps: two clock reads per upstream call or tool, never per token.

    The run's clock is monotonic; `begin` pins it to the wall clock once, so
    that spans built later carry real times.
    """

    __slots__ = ("_clock", "_offset", "current", "steps")

    def __init__(self) -> None:
        self._clock: Callable[[], float] = time.monotonic
        self._offset = time.time() - time.monotonic()
        self.steps: list[Step] = []
        self.current: Step | None = None  # the upstream call under way

    def begin(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._offset = time.time() - clock()

    def wall(self, moment: float) -> float:
        """A reading of the run's clock, as wall-clock time."""
        return moment + self._offset

    def now(self) -> float:
        return self._clock() + self._offset

    def upstream(self) -> _Timing:
        return _Timing(self, Step("upstream", 0.0))

    def tool(self, name: str, call_id: str) -> _Timing:
        return _Timing(self, Step("tool", 0.0, name=name, call_id=call_id))

    def note_response(self, last_chunks: list[Any]) -> None:
        """Keep the model and id the server reported, from a round's last chunk."""
        step = self.current
        if step is None or not last_chunks or type(last_chunks[-1]) is not dict:
            return
        chunk = last_chunks[-1]
        model, response_id = chunk.get("model"), chunk.get("id")
        step.response_model = model[:200] if isinstance(model, str) else None
        step.response_id = response_id[:200] if isinstance(response_id, str) else None


class _Timing:
    __slots__ = ("_steps", "step")

    def __init__(self, steps: RunSteps, step: Step) -> None:
        self._steps = steps
        self.step = step

    def __enter__(self) -> Step:
        steps, step = self._steps, self.step
        step.started_at = steps.now()
        steps.steps.append(step)
        if step.kind == "upstream":
            steps.current = step
        return step

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        steps, step = self._steps, self.step
        step.ended_at = steps.now()
        if steps.current is step:
            steps.current = None
        if isinstance(exc, ChatstreamError):
            step.error = exc.code
        elif isinstance(exc, Exception):
            step.error = type(exc).__name__
        elif exc is not None:
            step.error = "cancelled"


class RunListener(Protocol):
    def run_started(self, run: RunStarted) -> None: ...

    def run_finished(self, record: RunRecord) -> None: ...

    def chat_rejected(self, code: str) -> None:
        """A chat refused before its run began: `rate_limited`, `too_many_runs`, …"""
        ...


class RunListeners:
    """Several listeners as one; a listener that raises is logged, never propagated."""

    __slots__ = ("_listeners",)

    def __init__(self, listeners: Iterable[RunListener] = ()) -> None:
        self._listeners = list(listeners)

    def add(self, listener: RunListener) -> None:
        self._listeners.append(listener)

    def run_started(self, run: RunStarted) -> None:
        for listener in self._listeners:
            try:
                listener.run_started(run)
            except Exception:
                logger.exception("run listener %s failed on start", type(listener).__name__)

    def run_finished(self, record: RunRecord) -> None:
        for listener in self._listeners:
            try:
                listener.run_finished(record)
            except Exception:
                logger.exception("run listener %s failed on finish", type(listener).__name__)

    def chat_rejected(self, code: str) -> None:
        for listener in self._listeners:
            try:
                listener.chat_rejected(code)
            except Exception:
                logger.exception("run listener %s failed on rejection", type(listener).__name__)
