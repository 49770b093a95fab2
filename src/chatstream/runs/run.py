"""One run: one assistant turn, generated server-side, whoever is watching.

    start ─┬─ thinking* ─ (reasoning|delta)* ─┬─────────────────────────────┬─ [error] ─ done
           │                                  └─ tool_call+ ─ tool_result+ ─┘ (next round)
           └─ (cancel / timeout / upstream failure, at any point) ──────────┘

The run owns its event log and nothing else; the registry owns the run's
task. The generation (`runs/generation.py`) streams the model's answer and
runs its tools; the timer (`runs/timers.py`) keeps the deadlines. At the end
the run writes what it produced to the database once, in one transaction,
and only then appends `done`. However it ends, it ends through the same
path, with what it has.

A run cannot take anything else down with it: whatever it raises, at any
stage, is logged once with its traceback and ends this run with `error`
(`internal`) and `done`, what it streamed persisted. `execute` never raises.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Protocol, get_args

import anyio

from chatstream.errors import ChatstreamError, ServerShutdown, UpstreamTimeout
from chatstream.logs import log_fault
from chatstream.runs import timers
from chatstream.runs.events import (
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    Event,
    EventPayload,
    MessageStatus,
)
from chatstream.runs.generation import Generation
from chatstream.runs.handle import RunState
from chatstream.runs.lifecycle import RunRecord
from chatstream.runs.log import EventLog, MemoryEventLog, Pusher
from chatstream.runs.spec import RunLimits, RunSpec
from chatstream.runs.usage import run_metrics, total_usage
from chatstream.storage.records import OutputRow, RunOutput
from chatstream.upstream.stream import ChatUpstream

logger = logging.getLogger(__name__)

# The final write gets this long, shielded from cancellation, before the run
# gives up on the database (and, in time, hands the rows to the spool).
PERSIST_TIMEOUT_S = 10.0
FAULT_MESSAGE = "An internal error ended this answer; what was generated so far is saved."
UNSAVED_MESSAGE = "The answer could not be saved."

__all__ = ["Run", "RunLimits", "RunSpec", "RunStore"]

OnEnd = Callable[[], Awaitable[None]]


class RunStore(Protocol):
    async def save(self, output: RunOutput) -> bool:
        """Write every row in one transaction; True if the database has them.

        False means they are kept elsewhere (the spool) until it takes them.
        """
        ...


class Run:
    def __init__(
        self,
        spec: RunSpec,
        *,
        upstream: ChatUpstream,
        store: RunStore,
        limits: RunLimits,
        on_end: OnEnd | None = None,
        log: EventLog | None = None,
    ) -> None:
        self.spec = spec
        self.id = spec.message_id
        self.session_id = spec.session_id
        self.owner = spec.owner
        self.log: EventLog = log if log is not None else MemoryEventLog()
        self.followers = 0
        self.status: MessageStatus | None = None
        self.finished = anyio.Event()
        self.error: ErrorEvent | None = None
        self._store = store
        self._limits = limits
        self._on_end = on_end
        self._cancel_scope = anyio.CancelScope()
        self._stop_status: MessageStatus = "cancelled"
        self._clock = time.monotonic  # the loop's clock once running
        self._started_at = 0.0
        self.generation: Generation | None = Generation(
            spec,
            upstream=upstream,
            limits=limits,
            append=self._append,
            clock=self._now,
            held=self.log.held,
        )
        self._append(
            {
                "type": "start",
                "session_id": str(spec.session_id),
                "message_id": str(spec.message_id),
                "user_message_id": str(spec.user_message_id),
                "model": spec.model,
            }
        )

    def _append(self, payload: EventPayload) -> Event:
        return self.log.append(payload)

    def _now(self) -> float:
        return self._clock()

    # --- control -------------------------------------------------------------

    @property
    def live(self) -> bool:
        return not self.log.closed

    @property
    def last_seq(self) -> int:
        return self.log.last_seq

    async def wait(self) -> None:
        await self.finished.wait()

    async def state(self) -> RunState:
        return RunState(self.status if not self.live else None, self.log.last_seq)

    async def cancel(self, status: MessageStatus = "cancelled") -> bool:
        return self.stop(status)

    def stop(self, status: MessageStatus = "cancelled") -> bool:
        """Stop generating; the run still persists what it has. False if already ended."""
        if not self.live:
            return False
        self._stop_status = status
        self._cancel_scope.cancel()
        return True

    @asynccontextmanager
    async def follow(
        self, after: int = 0, idle_timeout: float | None = None, push: Pusher | None = None
    ) -> AsyncIterator[AsyncIterator[list[Event]]]:
        """Read the run's events after `after`; see `EventLog.follow`.

        When the last follower leaves a live run and the disconnect policy
        is `cancel`, the run is cancelled.
        """
        self.followers += 1
        try:
            async with aclosing(self.log.follow(after, idle_timeout or math.inf, push)) as events:
                yield events
        finally:
            self.followers -= 1
            if self.followers == 0 and self.live and self._limits.on_disconnect == "cancel":
                self.stop()

    # --- execution -------------------------------------------------------------

    async def execute(self) -> RunRecord | None:
        """Generate, persist once, then close the log with `done`; return what was done.

        Never raises (but cancellation). `on_end` (the run's limit slot, given
        back) is awaited before `done`, so a client that has seen `done` may
        start its next run at once.
        """
        try:
            return await self._execute()
        except Exception:
            log_fault(logger, "run %s failed unexpectedly", self.id)
            return await self._end_after_fault()
        finally:
            await self._ended()
            self.finished.set()
            # An ended run keeps its log (for late followers), nothing else:
            # not the context it was given, nor what it accumulated.
            self.generation = None
            self.spec.messages = []

    async def _ended(self) -> None:
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await on_end()
                except Exception:
                    log_fault(logger, "run %s: releasing its slot failed", self.id)

    async def _execute(self) -> RunRecord:
        self._clock = asyncio.get_running_loop().time
        self._started_at = self._clock()
        generation = self.generation
        assert generation is not None
        generation.round_started_at = generation.last_activity = self._started_at
        generation.steps.begin(self._clock)
        error: ChatstreamError | None = None
        try:
            with self._cancel_scope:
                await self._generate(generation)
        except ChatstreamError as exc:
            error = exc
        except Exception:
            log_fault(logger, "run %s failed unexpectedly", self.id)
            error = ChatstreamError(FAULT_MESSAGE)
        generation.flush_text()

        status: MessageStatus
        if self._cancel_scope.cancelled_caught:
            status = self._stop_status
            if status == "interrupted":
                error = ServerShutdown()
        else:
            status = "error" if error is not None else "complete"

        finished_at = self._clock()
        generation.end_round(status)
        usage = total_usage(generation.usages)
        metrics = run_metrics(
            usage,
            started_at=self._started_at,
            first_text_at=generation.first_text_at,
            finished_at=finished_at,
        )
        if generation.cached:
            metrics["cached"] = True
        rows = generation.rows(status)
        rows[-1].usage = dict(usage) if usage else None
        rows[-1].metrics = dict(metrics)
        output = self._output(rows)
        persisted, saved = await self._persist(output)
        if not saved and error is None:
            error, status = ChatstreamError(UNSAVED_MESSAGE), "error"
        if error is not None:
            self.error = _error_event(error)
            self._append(self.error)
        await self._ended()
        self.status = status
        done: DoneEvent = {
            "type": "done",
            "message_id": str(self.id),
            "status": status,
            "finish_reason": rows[-1].finish_reason,
            "persisted": persisted,
            "usage": usage,
            "metrics": metrics,
        }
        self._append(done)
        spec = self.spec
        return RunRecord(
            owner=spec.owner,
            session_id=spec.session_id,
            message_id=spec.message_id,
            user_message_id=spec.user_message_id,
            model=spec.model,
            status=status,
            finish_reason=done["finish_reason"],
            persisted=persisted,
            usage=usage,
            metrics=metrics,
            error=self.error,
            rows=rows,
            messages=spec.messages,
            started_at=generation.steps.wall(self._started_at),
            ended_at=generation.steps.now(),
            steps=generation.steps.steps,
        )

    async def _generate(self, generation: Generation) -> None:
        timed_out: UpstreamTimeout | None = None
        failure: Exception | None = None

        async def keep_time(scope: anyio.CancelScope) -> None:
            nonlocal timed_out
            timed_out = await timers.watch(
                generation,
                self._limits,
                started_at=self._started_at,
                clock=self._clock,
                append=self._append,
            )
            scope.cancel()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(keep_time, tasks.cancel_scope)
            try:
                await generation.run()
            except Exception as exc:
                # Raised out of the group it would arrive wrapped in an ExceptionGroup.
                failure = exc
            tasks.cancel_scope.cancel()
        if timed_out is not None:
            raise timed_out
        if failure is not None:
            raise failure

    # --- the end ---------------------------------------------------------------

    async def _persist(self, output: RunOutput) -> tuple[bool, bool]:
        """(in the database, kept somewhere): the spool keeps what the database refused."""
        if self.log.superseded:
            # Taken over while this process was away (paused, cut off): the taker saves
            # what followers were sent; this process' rows may hold more than that.
            logger.info("run %s: ended by the instance that took it over; not saved here", self.id)
            return False, True
        with anyio.CancelScope(shield=True), anyio.move_on_after(PERSIST_TIMEOUT_S):
            try:
                persisted = await self._store.save(output)
            except Exception:
                log_fault(logger, "run %s: its rows could not be kept", self.id)
                return False, False
            return persisted, True
        logger.error("run %s: keeping its rows timed out", self.id)
        return False, False

    async def _end_after_fault(self) -> RunRecord | None:
        """Close the log after an unexpected failure: `error`, what streamed saved, `done`.

        Returns the record of what was kept (listeners count this run too),
        or None when the log had closed already.
        """
        if self.log.closed:
            return None
        persisted = False
        rows: list[OutputRow] = []
        try:
            generation = self.generation
            if generation is not None:
                generation.flush_text()
                rows = generation.rows("error")
                output = self._output(rows)
                persisted, _ = await self._persist(output)
        except Exception:
            log_fault(logger, "run %s: its partial answer could not be kept", self.id)
        self.status = "error"
        self.error = _error_event(ChatstreamError(FAULT_MESSAGE, retryable=True))  # `internal`
        self._append(self.error)
        self._append(
            {
                "type": "done",
                "message_id": str(self.id),
                "status": "error",
                "finish_reason": None,
                "persisted": persisted,
                "usage": None,
                "metrics": None,
            }
        )
        spec = self.spec
        return RunRecord(
            owner=spec.owner,
            session_id=spec.session_id,
            message_id=spec.message_id,
            user_message_id=spec.user_message_id,
            model=spec.model,
            status="error",
            finish_reason=None,
            persisted=persisted,
            usage=None,
            metrics=run_metrics(
                None, started_at=self._started_at, first_text_at=None, finished_at=self._clock()
            ),
            error=self.error,
            rows=rows,
            messages=spec.messages,
        )

    # --- for checkpoints ------------------------------------------------------------

    def progress(self) -> tuple[int, int]:
        """How much the run has produced: (tool rows, chunks of the current round)."""
        return self.generation.progress() if self.generation is not None else (0, 0)

    def snapshot(self) -> RunOutput:
        """The rows as they would be written if the run were interrupted now."""
        assert self.generation is not None, "only live runs are checkpointed"
        return self._output(self.generation.rows("interrupted", final=False))

    def _output(self, rows: list[OutputRow]) -> RunOutput:
        # The answer follows the message it answers (the user's, or tool results).
        return RunOutput(self.owner, self.session_id, rows, parent_id=self.spec.user_message_id)


def _error_event(error: ChatstreamError) -> ErrorEvent:
    code: ErrorCode = error.code if error.code in _EVENT_CODES else "internal"  # type: ignore[assignment]
    return {"type": "error", "code": code, "message": error.message, "retryable": error.retryable}


# Error codes a run may put in an `error` event; anything else is reported as `internal`.
_EVENT_CODES: frozenset[str] = frozenset(get_args(ErrorCode))
