"""One run: one assistant turn, generated server-side, whoever is watching.

    start ─┬─ thinking* ─ delta* ─────────────────────┬─ [error] ─ done
           └─ (cancel / timeout / upstream failure) ──┘

The run owns its event log and nothing else; the registry owns the run's
task. It streams the upstream answer into the log as it arrives, then writes
what it produced to the database once, in one transaction, and only then
appends `done`. However it ends (complete, cancelled, upstream error,
timeout, shutdown), it ends through the same path, with what it has.

Per-token work is kept to the bone: parse, accumulate, append. Timers do not
run per token: a watchdog task wakes once per timeout period and compares
against the time of the last upstream activity.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import anyio

from chatstream.errors import ChatstreamError, ServerShutdown, UpstreamError, UpstreamTimeout
from chatstream.runs.accumulator import ChunkAccumulator
from chatstream.runs.events import (
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    Event,
    MessageStatus,
    Metrics,
    Usage,
)
from chatstream.runs.log import MemoryEventLog
from chatstream.storage.records import OutputRow, RunOutput
from chatstream.upstream.stream import ChatUpstream, UpstreamRequest

logger = logging.getLogger(__name__)

# The final write gets this long, shielded from cancellation, before the run
# gives up on the database (and, in time, hands the rows to the spool).
PERSIST_TIMEOUT_S = 10.0


@dataclass(slots=True)
class RunLimits:
    first_token_timeout_s: float
    idle_timeout_s: float
    max_duration_s: float
    thinking_interval_s: float
    on_disconnect: Literal["continue", "cancel"] = "continue"


@dataclass(slots=True)
class RunSpec:
    """What to generate, fixed when the run is created."""

    owner: str
    session_id: uuid.UUID
    message_id: uuid.UUID
    user_message_id: uuid.UUID
    model: str
    messages: list[dict[str, Any]]
    max_tokens: int
    temperature: float | None = None
    chunk_chars: int | None = None


class RunStore(Protocol):
    async def write_run_output(self, output: RunOutput) -> None:
        """Write every row in one transaction, or raise and write nothing."""
        ...


class Run:
    def __init__(
        self,
        spec: RunSpec,
        *,
        upstream: ChatUpstream,
        store: RunStore,
        limits: RunLimits,
    ) -> None:
        self.spec = spec
        self.id = spec.message_id
        self.log = MemoryEventLog()
        self.followers = 0
        self.status: MessageStatus | None = None
        self.finished = anyio.Event()
        self.output: RunOutput | None = None
        self.error: ErrorEvent | None = None
        self._upstream = upstream
        self._store = store
        self._limits = limits
        self._cancel_scope = anyio.CancelScope()
        self._stop_status: MessageStatus = "cancelled"
        self._clock = time.monotonic  # the loop's clock once running
        self._started_at = 0.0
        self._first_text_at: float | None = None
        self._last_activity = 0.0
        self._pending_text: list[str] = []
        self._pending_chars = 0
        self.log.append(
            {
                "type": "start",
                "session_id": str(spec.session_id),
                "message_id": str(spec.message_id),
                "user_message_id": str(spec.user_message_id),
                "model": spec.model,
            }
        )

    # --- control -------------------------------------------------------------

    @property
    def session_id(self) -> uuid.UUID:
        return self.spec.session_id

    @property
    def live(self) -> bool:
        return not self.log.closed

    @property
    def last_seq(self) -> int:
        return self.log.last_seq

    async def wait(self) -> None:
        await self.finished.wait()

    def cancel(self, status: MessageStatus = "cancelled") -> bool:
        """Stop generating; the run still persists what it has. False if already ended."""
        if not self.live:
            return False
        self._stop_status = status
        self._cancel_scope.cancel()
        return True

    @asynccontextmanager
    async def follow(
        self, after: int = 0, idle_timeout: float | None = None
    ) -> AsyncIterator[AsyncIterator[list[Event]]]:
        """Read the run's events after `after`; see `EventLog.follow`.

        When the last follower leaves a live run and the disconnect policy
        is `cancel`, the run is cancelled.
        """
        self.followers += 1
        try:
            async with aclosing(self.log.follow(after, idle_timeout or math.inf)) as events:
                yield events
        finally:
            self.followers -= 1
            if self.followers == 0 and self.live and self._limits.on_disconnect == "cancel":
                self.cancel()

    # --- execution -------------------------------------------------------------

    async def execute(self) -> None:
        """Generate, persist once, then close the log with `done`. Never raises."""
        self._clock = asyncio.get_running_loop().time
        self._started_at = self._last_activity = self._clock()
        accumulator = ChunkAccumulator()
        error: ChatstreamError | None = None
        try:
            with self._cancel_scope:
                await self._generate(accumulator)
        except ChatstreamError as exc:
            error = exc
        except Exception:
            logger.exception("run %s failed unexpectedly", self.id)
            error = ChatstreamError()
        self._flush_text()

        if self._cancel_scope.cancelled_caught:
            status: MessageStatus = self._stop_status
            if status == "interrupted":
                error = ServerShutdown()
        elif error is not None:
            if accumulator.finish_reason is not None and isinstance(error, UpstreamError):
                # The answer was complete; only the goodbye was lost.
                logger.info("run %s: upstream failed after finish_reason; kept", self.id)
                status, error = "complete", None
            else:
                status = "error"
        else:
            status = "complete"

        if error is not None:
            self.error = _error_event(error)
            self.log.append(self.error)
        finished_at = self._clock()
        usage = self._usage(accumulator, status)
        metrics = self._metrics(usage, finished_at)
        self.output = RunOutput(
            owner=self.spec.owner,
            session_id=self.spec.session_id,
            rows=[
                OutputRow(
                    id=self.spec.message_id,
                    role="assistant",
                    content=accumulator.text,
                    status=status,
                    model=self.spec.model,
                    finish_reason=accumulator.finish_reason,
                    usage=dict(usage) if usage else None,
                    metrics=dict(metrics),
                )
            ],
        )
        persisted = await self._persist(self.output)
        self.status = status
        done: DoneEvent = {
            "type": "done",
            "message_id": str(self.id),
            "status": status,
            "finish_reason": accumulator.finish_reason,
            "persisted": persisted,
            "usage": usage,
            "metrics": metrics,
        }
        self.log.append(done)
        self.finished.set()

    async def _generate(self, accumulator: ChunkAccumulator) -> None:
        request = UpstreamRequest(
            model=self.spec.model,
            messages=self.spec.messages,
            max_tokens=self.spec.max_tokens,
            temperature=self.spec.temperature,
        )
        timed_out: list[UpstreamTimeout] = []
        failure: Exception | None = None
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._timers, tasks.cancel_scope, timed_out)
            try:
                await self._stream_round(request, accumulator)
            except Exception as exc:
                # Raised out of the group it would arrive wrapped in an ExceptionGroup.
                failure = exc
            tasks.cancel_scope.cancel()
        if timed_out:
            raise timed_out[0]
        if failure is not None:
            raise failure
        if accumulator.finish_reason is None:
            raise UpstreamError("The model server's answer was cut short.")

    async def _stream_round(self, request: UpstreamRequest, accumulator: ChunkAccumulator) -> None:
        feed = accumulator.feed
        clock = self._clock
        async with self._upstream.stream(request) as batches:
            async for batch in batches:
                self._last_activity = clock()
                for chunk in batch:
                    text = feed(chunk)
                    if text:
                        self._emit_text(text)

    def _emit_text(self, text: str) -> None:
        if self._first_text_at is None:
            self._first_text_at = self._clock()
        chunk_chars = self.spec.chunk_chars
        if chunk_chars is None:
            self.log.append({"type": "delta", "text": text})
            return
        self._pending_text.append(text)
        self._pending_chars += len(text)
        if self._pending_chars >= chunk_chars:
            self._flush_text()

    def _flush_text(self) -> None:
        if self._pending_text:
            self.log.append({"type": "delta", "text": "".join(self._pending_text)})
            self._pending_text.clear()
            self._pending_chars = 0

    async def _timers(self, scope: anyio.CancelScope, timed_out: list[UpstreamTimeout]) -> None:
        """The run's one timer: `thinking` while no text has come, and the three timeouts.

        It never runs per token: it sleeps until the next thing due and then
        compares against the time of the last upstream activity.
        """
        limits = self._limits
        started = self._started_at
        max_deadline = started + limits.max_duration_s
        next_thinking = started + limits.thinking_interval_s
        while True:
            now = self._clock()
            quiet = self._first_text_at is None
            if quiet:
                deadline = started + limits.first_token_timeout_s
            else:
                deadline = self._last_activity + limits.idle_timeout_s
            deadline = min(deadline, max_deadline)
            if now >= deadline:
                if deadline == max_deadline:
                    error = UpstreamTimeout("The answer took longer than allowed.", retryable=False)
                elif quiet:
                    error = UpstreamTimeout("The model server did not start answering in time.")
                else:
                    error = UpstreamTimeout("The model server stopped sending mid-answer.")
                timed_out.append(error)
                scope.cancel()
                return
            # Never sleep past one idle period: the first token may arrive
            # meanwhile, and from then on the (shorter) idle deadline rules.
            wake = min(deadline, now + limits.idle_timeout_s)
            if quiet:
                if now >= next_thinking:
                    self.log.append({"type": "thinking", "elapsed_ms": int((now - started) * 1000)})
                    while next_thinking <= now:
                        next_thinking += limits.thinking_interval_s
                wake = min(wake, next_thinking)
            await anyio.sleep(wake - now)

    # --- the end ---------------------------------------------------------------

    async def _persist(self, output: RunOutput) -> bool:
        with anyio.CancelScope(shield=True), anyio.move_on_after(PERSIST_TIMEOUT_S):
            try:
                await self._store.write_run_output(output)
            except Exception as exc:
                logger.error("run %s: final write failed (%s)", self.id, type(exc).__name__)
                return False
            return True
        logger.error("run %s: final write timed out", self.id)
        return False

    def _usage(self, accumulator: ChunkAccumulator, status: MessageStatus) -> Usage | None:
        reported = accumulator.usage
        if reported:
            try:
                prompt = int(reported.get("prompt_tokens") or 0)
                completion = int(reported.get("completion_tokens") or 0)
                return {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": int(reported.get("total_tokens") or prompt + completion),
                }
            except (TypeError, ValueError):
                pass
        completion = accumulator.content_chunks
        if completion == 0 and status != "complete":
            return None
        # No usage from the server: estimate. One streamed chunk is about one
        # token; a prompt is about four characters per token.
        prompt_chars = sum(len(str(m.get("content") or "")) for m in self.spec.messages)
        prompt = math.ceil(prompt_chars / 4)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _metrics(self, usage: Usage | None, finished_at: float) -> Metrics:
        ttft_ms = None
        tokens_per_second = None
        if self._first_text_at is not None:
            ttft_ms = round((self._first_text_at - self._started_at) * 1000)
            streaming_s = finished_at - self._first_text_at
            if usage is not None and streaming_s > 0:
                tokens_per_second = round(usage["completion_tokens"] / streaming_s, 2)
        return {
            "ttft_ms": ttft_ms,
            "duration_ms": round((finished_at - self._started_at) * 1000),
            "tokens_per_second": tokens_per_second,
        }


def _error_event(error: ChatstreamError) -> ErrorEvent:
    code: ErrorCode = error.code if error.code in _EVENT_CODES else "internal"  # type: ignore[assignment]
    return {"type": "error", "code": code, "message": error.message, "retryable": error.retryable}


_EVENT_CODES = frozenset(
    {
        "upstream_error",
        "upstream_timeout",
        "upstream_rate_limited",
        "rate_limited",
        "invalid_request",
        "server_shutdown",
        "internal",
    }
)
