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
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

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

    @property
    def answer(self) -> str:
        return self.rows[-1].content if self.rows else ""


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
