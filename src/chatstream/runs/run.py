"""One run: one assistant turn, generated server-side, whoever is watching.

    start ─┬─ thinking* ─ delta* ─┬──────────────────────────────────────────┬─ [error] ─ done
           │                      └─ tool_call+ ─ thinking* ─ tool_result+ ─┘ (next round)
           └─ (cancel / timeout / upstream failure, at any point) ─────────────────┘

The run owns its event log and nothing else; the registry owns the run's
task. It streams the model's answer into the log as it arrives. When the
model asks for tools, it runs them (concurrently, each with a timeout),
sends their results back and streams the next round, for at most
`max_tool_rounds` rounds. At the end it writes what it produced to the
database once, in one transaction (each tool round's assistant row and tool
rows, then the final assistant row), and only then appends `done`. However it
ends, it ends through the same path, with what it has.

Per-token work is kept to the bone: parse, accumulate, append. Timers do not
run per token: one timer task wakes when something is due and compares
against the time of the last upstream activity.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

import anyio
import anyio.lowlevel

from chatstream.errors import ChatstreamError, ServerShutdown, UpstreamError, UpstreamTimeout
from chatstream.runs.accumulator import ChunkAccumulator, ToolCall
from chatstream.runs.events import (
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    Event,
    MessageStatus,
    Metrics,
    Usage,
)
from chatstream.runs.lifecycle import RunRecord
from chatstream.runs.log import MemoryEventLog
from chatstream.storage.records import OutputRow, RunOutput
from chatstream.tools import ToolSet
from chatstream.upstream.stream import ChatUpstream, UpstreamRequest

logger = logging.getLogger(__name__)

# The final write gets this long, shielded from cancellation, before the run
# gives up on the database (and, in time, hands the rows to the spool).
PERSIST_TIMEOUT_S = 10.0
CANCELLED_TOOL = "error: the run ended before the tool finished"


@dataclass(slots=True)
class RunLimits:
    first_token_timeout_s: float
    idle_timeout_s: float
    max_duration_s: float
    thinking_interval_s: float
    on_disconnect: Literal["continue", "cancel"] = "continue"
    max_tool_rounds: int = 5
    tool_timeout_s: float = 30.0


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
    tools: ToolSet = field(default_factory=ToolSet)


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
        self._on_end = on_end
        self._cancel_scope = anyio.CancelScope()
        self._stop_status: MessageStatus = "cancelled"
        self._clock = time.monotonic  # the loop's clock once running
        self._started_at = 0.0
        # The current round: when it started, when the upstream last sent
        # anything, whether text has come in it, whether tools are running.
        self._round = ChunkAccumulator()
        self._round_started_at = 0.0
        self._last_activity = 0.0
        self._text_in_round = False
        self._tools_running = False
        self._first_text_at: float | None = None
        self._pending_text: list[str] = []
        self._pending_chars = 0
        # Rows of the finished tool rounds, and every round's usage.
        self._tool_rows: list[OutputRow] = []
        self._usages: list[Usage] = []
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

    async def execute(self) -> RunRecord | None:
        """Generate, persist once, then close the log with `done`; return what was done.

        `on_end` (the run's limit slot, given back) is awaited before `done`,
        so a client that has seen `done` may start its next run at once.
        """
        try:
            return await self._execute()
        finally:
            await self._ended()

    async def _ended(self) -> None:
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            with anyio.CancelScope(shield=True):
                await on_end()

    async def _execute(self) -> RunRecord:
        self._clock = asyncio.get_running_loop().time
        self._started_at = self._clock()
        error: ChatstreamError | None = None
        try:
            with self._cancel_scope:
                await self._generate()
        except ChatstreamError as exc:
            error = exc
        except Exception:
            logger.exception("run %s failed unexpectedly", self.id)
            error = ChatstreamError()
        self._flush_text()

        status: MessageStatus
        if self._cancel_scope.cancelled_caught:
            status = self._stop_status
            if status == "interrupted":
                error = ServerShutdown()
        else:
            status = "error" if error is not None else "complete"
        if error is not None:
            self.error = _error_event(error)
            self.log.append(self.error)

        finished_at = self._clock()
        self._usages.append(self._round_usage(self._round, self.spec.messages, status))
        usage = _total(self._usages)
        metrics = self._metrics(usage, finished_at)
        final = OutputRow(
            id=self.spec.message_id,
            role="assistant",
            content=self._round.text,
            status=status,
            model=self.spec.model,
            finish_reason=self._round.finish_reason,
            usage=dict(usage) if usage else None,
            metrics=dict(metrics),
        )
        self.output = RunOutput(
            owner=self.spec.owner, session_id=self.spec.session_id, rows=[*self._tool_rows, final]
        )
        persisted = await self._persist(self.output)
        await self._ended()
        self.status = status
        done: DoneEvent = {
            "type": "done",
            "message_id": str(self.id),
            "status": status,
            "finish_reason": self._round.finish_reason,
            "persisted": persisted,
            "usage": usage,
            "metrics": metrics,
        }
        self.log.append(done)
        self.finished.set()
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
            rows=self.output.rows,
            messages=spec.messages,
        )

    async def _generate(self) -> None:
        timed_out: list[UpstreamTimeout] = []
        failure: Exception | None = None
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._timers, tasks.cancel_scope, timed_out)
            try:
                await self._rounds()
            except Exception as exc:
                # Raised out of the group it would arrive wrapped in an ExceptionGroup.
                failure = exc
            tasks.cancel_scope.cancel()
        if timed_out:
            raise timed_out[0]
        if failure is not None:
            raise failure

    async def _rounds(self) -> None:
        """Stream the answer; while the model calls tools, run them and ask again."""
        tools = self.spec.tools
        messages = list(self.spec.messages)
        rounds = 0
        while True:
            offer_tools = bool(tools) and rounds < self._limits.max_tool_rounds
            request = UpstreamRequest(
                model=self.spec.model,
                messages=messages,
                max_tokens=self.spec.max_tokens,
                temperature=self.spec.temperature,
                tools=tools.schemas,
                # Past the round limit the tools stay described (the history
                # refers to them) but the model is told not to call them.
                tool_choice=None if offer_tools or not tools else "none",
            )
            await self._stream_round(request)
            calls = self._round.tool_calls
            if not calls:
                return
            if not offer_tools:
                raise UpstreamError(
                    f"The model kept calling tools after {self._limits.max_tool_rounds} rounds.",
                    retryable=False,
                )
            results = await self._run_tools(calls)
            messages.extend(self._finish_tool_round(calls, results, messages))
            rounds += 1

    async def _stream_round(self, request: UpstreamRequest) -> None:
        self._round = accumulator = ChunkAccumulator()
        self._round_started_at = self._last_activity = self._clock()
        self._text_in_round = False
        feed = accumulator.feed
        clock = self._clock
        try:
            async with self._upstream.stream(request) as batches:
                async for batch in batches:
                    self._last_activity = clock()
                    for chunk in batch:
                        text = feed(chunk)
                        if text:
                            self._emit_text(text)
        except UpstreamError:
            if accumulator.finish_reason is None:
                raise
            # The answer was complete; only the end of the stream was lost.
            logger.info("run %s: upstream failed after finish_reason; answer kept", self.id)
        self._flush_text()
        if accumulator.finish_reason is None:
            raise UpstreamError("The model server's answer was cut short.")

    def _emit_text(self, text: str) -> None:
        if not self._text_in_round:
            self._text_in_round = True
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

    async def _run_tools(self, calls: list[ToolCall]) -> list[str | None]:
        """Run the round's calls concurrently; each result is sent the moment it is ready."""
        for call in calls:
            self.log.append(
                {
                    "type": "tool_call",
                    "call_id": call.call_id,
                    "name": call.name,
                    "arguments": call.arguments,
                }
            )
        results: list[str | None] = [None] * len(calls)
        # Let readers send the round's text before the tools run.
        await anyio.lowlevel.checkpoint()

        async def run_one(index: int, call: ToolCall) -> None:
            result = await self.spec.tools.run(
                call.name, call.arguments, self._limits.tool_timeout_s
            )
            results[index] = result
            self.log.append(
                {
                    "type": "tool_result",
                    "call_id": call.call_id,
                    "name": call.name,
                    "content": result,
                }
            )

        self._tools_running = True
        try:
            async with anyio.create_task_group() as tasks:
                for index, call in enumerate(calls):
                    tasks.start_soon(run_one, index, call)
        finally:
            self._tools_running = False
            if any(result is None for result in results):
                # Cancelled mid-tools: keep the round, so the stored history
                # never has a call without its result.
                self._finish_tool_round(calls, results, self.spec.messages)
        return results

    def _finish_tool_round(
        self, calls: list[ToolCall], results: list[str | None], messages: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Record the round's rows; return the messages that continue the conversation."""
        round_ = self._round
        self._usages.append(self._round_usage(round_, messages, "complete"))
        openai_calls = [call.as_openai() for call in calls]
        self._tool_rows.append(
            OutputRow(
                id=uuid.uuid4(),
                role="assistant",
                content=round_.text,
                status="complete",
                model=self.spec.model,
                finish_reason=round_.finish_reason,
                tool_calls=openai_calls,
            )
        )
        continuation: list[dict[str, Any]] = [
            {"role": "assistant", "content": round_.text or None, "tool_calls": openai_calls}
        ]
        for call, result in zip(calls, results, strict=True):
            content = result if result is not None else CANCELLED_TOOL
            self._tool_rows.append(
                OutputRow(
                    id=uuid.uuid4(),
                    role="tool",
                    content=content,
                    status="complete",
                    tool_call_id=call.call_id,
                    name=call.name,
                )
            )
            continuation.append({"role": "tool", "tool_call_id": call.call_id, "content": content})
        # The next round starts from nothing of its own.
        self._round = ChunkAccumulator()
        return continuation

    async def _timers(self, scope: anyio.CancelScope, timed_out: list[UpstreamTimeout]) -> None:
        """The run's one timer: `thinking` while nothing shows, and the three timeouts.

        It never runs per token: it sleeps until the next thing due and then
        compares against the time of the last upstream activity.
        """
        limits = self._limits
        started = self._started_at
        max_deadline = started + limits.max_duration_s
        next_thinking = started + limits.thinking_interval_s
        while True:
            now = self._clock()
            waiting_for_first = self._last_activity == self._round_started_at
            if self._tools_running:
                deadline = max_deadline  # each tool has its own timeout
            elif waiting_for_first:
                deadline = min(self._round_started_at + limits.first_token_timeout_s, max_deadline)
            else:
                deadline = min(self._last_activity + limits.idle_timeout_s, max_deadline)
            if now >= deadline:
                if deadline == max_deadline:
                    error = UpstreamTimeout("The answer took longer than allowed.", retryable=False)
                elif waiting_for_first:
                    error = UpstreamTimeout("The model server did not start answering in time.")
                else:
                    error = UpstreamTimeout("The model server stopped sending mid-answer.")
                timed_out.append(error)
                scope.cancel()
                return
            # Never sleep past one idle period: the round's first data may
            # arrive meanwhile, and from then on the idle deadline rules.
            wake = min(deadline, now + limits.idle_timeout_s)
            if self._tools_running or not self._text_in_round:
                if now >= next_thinking:
                    self.log.append({"type": "thinking", "elapsed_ms": int((now - started) * 1000)})
                    while next_thinking <= now:
                        next_thinking += limits.thinking_interval_s
                wake = min(wake, next_thinking)
            await anyio.sleep(max(wake - now, 0.001))

    # --- the end ---------------------------------------------------------------

    async def _persist(self, output: RunOutput) -> bool:
        with anyio.CancelScope(shield=True), anyio.move_on_after(PERSIST_TIMEOUT_S):
            try:
                return await self._store.save(output)
            except Exception as exc:
                logger.error("run %s: its rows could not be kept (%s)", self.id, type(exc).__name__)
                return False
        logger.error("run %s: keeping its rows timed out", self.id)
        return False

    # --- for checkpoints ------------------------------------------------------------

    def progress(self) -> tuple[int, int]:
        """How much the run has produced: (tool rows, chunks of the current round)."""
        return len(self._tool_rows), self._round.content_chunks

    def snapshot(self) -> RunOutput:
        """The rows as they would be written if the run were interrupted now."""
        partial = OutputRow(
            id=self.spec.message_id,
            role="assistant",
            content=self._round.text,
            status="interrupted",
            model=self.spec.model,
        )
        return RunOutput(
            owner=self.spec.owner, session_id=self.spec.session_id, rows=[*self._tool_rows, partial]
        )

    def _round_usage(
        self, accumulator: ChunkAccumulator, messages: list[dict[str, Any]], status: MessageStatus
    ) -> Usage:
        reported = accumulator.usage
        if reported:
            try:
                prompt = int(reported.get("prompt_tokens") or 0)
                completion = int(reported.get("completion_tokens") or 0)
                total = int(reported.get("total_tokens") or prompt + completion)
                return {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": total,
                }
            except (TypeError, ValueError):
                pass
        # No usage from the server: estimate. One streamed chunk is about one
        # token; a prompt is about four characters per token.
        completion = accumulator.content_chunks
        prompt = 0
        if completion or status == "complete":
            prompt = math.ceil(sum(len(str(m.get("content") or "")) for m in messages) / 4)
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


def _total(usages: list[Usage]) -> Usage | None:
    """The run's usage: every round summed; None when nothing was asked or produced."""
    if not any(u["total_tokens"] for u in usages):
        return None
    return {
        "prompt_tokens": sum(u["prompt_tokens"] for u in usages),
        "completion_tokens": sum(u["completion_tokens"] for u in usages),
        "total_tokens": sum(u["total_tokens"] for u in usages),
    }


def _error_event(error: ChatstreamError) -> ErrorEvent:
    code: ErrorCode = error.code if error.code in _EVENT_CODES else "internal"  # type: ignore[assignment]
    return {"type": "error", "code": code, "message": error.message, "retryable": error.retryable}


# Error codes a run may put in an `error` event; anything else is reported as `internal`.
_EVENT_CODES: frozenset[str] = frozenset(get_args(ErrorCode))
