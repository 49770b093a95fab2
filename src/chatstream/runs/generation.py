"""The model's side of a run: rounds of streamed text and tool calls, and what they produced.

    round ─ stream text (delta*) ─┬─ no tool calls: done
                                  ├─ the client's tools: tool_call+, done (they are the answer)
                                  └─ tool_call+ ─ run tools ─ tool_result+ ─ next round

`Generation` appends `reasoning`, `delta`, `tool_call` and `tool_result` events as they
happen and keeps what the end of the run writes: each finished tool round's
rows, the current round's text, every round's usage. The timer
(`runs/timers.py`) reads its clock fields; the run (`runs/run.py`) decides
when it ends and writes what it holds.

Per-token work is kept to the bone: parse, accumulate, append.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import anyio
import anyio.lowlevel

from chatstream.errors import UpstreamError
from chatstream.runs.accumulator import ChunkAccumulator, ToolCall
from chatstream.runs.events import EventPayload, MessageStatus, ToolCallEvent, Usage
from chatstream.runs.lifecycle import RunSteps
from chatstream.runs.spec import RunLimits, RunSpec, round_row_id, tool_row_id
from chatstream.runs.usage import round_usage
from chatstream.storage.records import OutputRow
from chatstream.upstream.errors import truncated
from chatstream.upstream.stream import ChatUpstream, UpstreamRequest

logger = logging.getLogger(__name__)

CANCELLED_TOOL = "error: the run ended before the tool finished"


class Generation:
    def __init__(
        self,
        spec: RunSpec,
        *,
        upstream: ChatUpstream,
        limits: RunLimits,
        append: Callable[[EventPayload], object],
        clock: Callable[[], float],
        held: Callable[[], AbstractContextManager[None]],
    ) -> None:
        self._spec = spec
        self._upstream = upstream
        self._limits = limits
        self._append = append
        self._held = held  # one read's events reach caught-up readers in one write
        self._clock = clock
        # The current round: when it started, when the upstream last sent
        # anything, whether text has come in it, whether tools are running.
        self.round = ChunkAccumulator()
        self.round_started_at = 0.0
        self.last_activity = 0.0
        self.text_in_round = False
        self.reasoning_in_round = False
        self.tools_running = False
        self.first_text_at: float | None = None
        self._pending_text: list[str] = []
        self._pending_chars = 0
        # Rows of the finished tool rounds, and every round's usage.
        self.tool_rows: list[OutputRow] = []
        self._rounds_done = 0
        self.usages: list[Usage] = []
        self.steps = RunSteps()  # upstream calls and tools, timed for traces
        self.cached = False  # answered from the answer cache (upstream/cache.py)

    async def run(self) -> None:
        """Stream the answer; while the model calls tools, run them and ask again."""
        spec = self._spec
        tools = spec.tools
        messages = list(spec.messages)
        rounds = 0
        while True:
            offer_tools = bool(tools) and rounds < self._limits.max_tool_rounds
            request = UpstreamRequest(
                model=spec.model,
                messages=messages,
                max_tokens=spec.max_tokens,
                temperature=spec.temperature,
                tools=tools.schemas,
                # Past the round limit the tools stay described (the history
                # refers to them) but the model is told not to call them.
                tool_choice=None if offer_tools or not tools else "none",
                extra=spec.upstream_fields,
                fresh=spec.answer_again,
            )
            with self.steps.upstream() as step:
                await self._stream_round(request)
                step.finish_reason, step.usage = self.round.finish_reason, self.round.usage
            self.cached = self.cached or request.from_cache
            calls = self.round.tool_calls
            if not calls:
                return
            if spec.client_tools:
                # The client runs its own tools: the calls are the answer (never run here).
                for call in calls:
                    self._append({**call_event(call), "client": True})
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
        self.round = accumulator = ChunkAccumulator()
        self.round_started_at = self.last_activity = self._clock()
        self.text_in_round = self.reasoning_in_round = False
        feed = accumulator.feed
        clock = self._clock
        held = self._held
        batch: list[Any] = []
        last: list[Any] = []  # the last chunk seen; not the whole batch, held across reads
        # A failure is raised inside the `async with`, so that the upstream
        # logs it with what its response says (status, request id); one
        # after the answer's `finish_reason` is no failure of the answer.
        async with self._upstream.stream(request) as batches:
            try:
                async for batch in batches:
                    self.last_activity = clock()
                    with held():
                        for chunk in batch:
                            text = feed(chunk)
                            if accumulator.new_reasoning:
                                self._emit_reasoning(accumulator.take_reasoning())
                            if text:
                                self._emit_text(text)
                    last = batch[-1:]
                    batch = []
            except UpstreamError:
                if accumulator.finish_reason is None:
                    raise
                # The answer was complete; only the end of the stream was lost.
                logger.info(
                    "run %s: upstream failed after finish_reason; answer kept",
                    self._spec.message_id,
                )
            self.steps.note_response(last)  # the round's last chunk names the model that answered
            if accumulator.finish_reason is None:
                raise truncated()
        self.flush_text()

    def _emit_reasoning(self, text: str) -> None:
        self.reasoning_in_round = True  # something shows: no more `thinking` heartbeats
        self.flush_text()  # what came before it goes first
        self._append({"type": "reasoning", "text": text})

    @property
    def showing(self) -> bool:
        """Whether this round has shown the client anything yet (text or reasoning)."""
        return self.text_in_round or self.reasoning_in_round

    def _emit_text(self, text: str) -> None:
        if not self.text_in_round:
            self.text_in_round = True
            if self.first_text_at is None:
                self.first_text_at = self._clock()
        chunk_chars = self._spec.chunk_chars
        if chunk_chars is None:
            self._send_text(text)
            return
        self._pending_text.append(text)
        self._pending_chars += len(text)
        if self._pending_chars >= chunk_chars:
            self.flush_text()

    def flush_text(self) -> None:
        """Send the text held back for `chunk_chars`, if any."""
        if self._pending_text:
            self._send_text("".join(self._pending_text))
            self._pending_text.clear()
            self._pending_chars = 0

    def _send_text(self, text: str) -> None:
        if self.round.logprobs:  # only when the client asked for them
            self._append({"type": "delta", "text": text, "logprobs": self.round.take_logprobs()})
        else:
            self._append({"type": "delta", "text": text})

    async def _run_tools(self, calls: list[ToolCall]) -> list[str | None]:
        """Run the round's calls concurrently; each result is sent the moment it is ready."""
        for call in calls:
            self._append(call_event(call))
        results: list[str | None] = [None] * len(calls)
        # Let readers send the round's text before the tools run.
        await anyio.lowlevel.checkpoint()

        async def run_one(index: int, call: ToolCall) -> None:
            with self.steps.tool(call.name, call.call_id):
                result = await self._spec.tools.run(
                    call.name, call.arguments, self._limits.tool_timeout_s
                )
            # PostgreSQL text cannot hold NUL; the event and the row must agree.
            result = result.replace("\x00", "\ufffd")
            results[index] = result
            self._append(
                {
                    "type": "tool_result",
                    "call_id": call.call_id,
                    "name": call.name,
                    "content": result,
                }
            )

        self.tools_running = True
        try:
            async with anyio.create_task_group() as tasks:
                for index, call in enumerate(calls):
                    tasks.start_soon(run_one, index, call)
        finally:
            self.tools_running = False
            if any(result is None for result in results):
                # Cancelled mid-tools: keep the round, so the stored history
                # never has a call without its result.
                self._finish_tool_round(calls, results, self._spec.messages)
        return results

    def _finish_tool_round(
        self, calls: list[ToolCall], results: list[str | None], messages: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Record the round's rows; return the messages that continue the conversation."""
        round_ = self.round
        round_index = self._rounds_done
        self._rounds_done += 1
        run_id = self._spec.message_id
        self.usages.append(round_usage(round_, messages, "complete"))
        openai_calls = [call.as_openai() for call in calls]
        self.tool_rows.append(
            OutputRow(
                id=round_row_id(run_id, round_index),
                role="assistant",
                content=round_.text,
                status="complete",
                model=self._spec.model,
                finish_reason=round_.finish_reason,
                tool_calls=openai_calls,
                reasoning=round_.reasoning or None,
            )
        )
        continuation: list[dict[str, Any]] = [
            {"role": "assistant", "content": round_.text or None, "tool_calls": openai_calls}
        ]
        for call_index, (call, result) in enumerate(zip(calls, results, strict=True)):
            content = result if result is not None else CANCELLED_TOOL
            self.tool_rows.append(
                OutputRow(
                    id=tool_row_id(run_id, round_index, call_index),
                    role="tool",
                    content=content,
                    status="complete",
                    tool_call_id=call.call_id,
                    name=call.name,
                )
            )
            continuation.append({"role": "tool", "tool_call_id": call.call_id, "content": content})
        # The next round starts from nothing of its own.
        self.round = ChunkAccumulator()
        return continuation

    # --- what it produced -----------------------------------------------------------

    def end_round(self, status: MessageStatus) -> None:
        """Count the last round's usage (once, when the run ends)."""
        self.usages.append(round_usage(self.round, self._spec.messages, status))

    def rows(self, status: MessageStatus, *, final: bool = True) -> list[OutputRow]:
        """Every row the run writes: the tool rounds', then the answer with `status`."""
        answer = OutputRow(
            id=self._spec.message_id,
            role="assistant",
            content=self.round.text,
            status=status,
            model=self._spec.model,
            finish_reason=self.round.finish_reason if final else None,
            reasoning=self.round.reasoning or None,
        )
        if self._spec.client_tools and final and status == "complete":
            # The client's tools' calls, as the answer carries them (replayed as sent).
            answer.tool_calls = [call.as_openai() for call in self.round.tool_calls] or None
        return [*self.tool_rows, answer]

    def progress(self) -> tuple[int, int]:
        """How much has been produced: (tool rows, chunks of the current round)."""
        return len(self.tool_rows), self.round.content_chunks


def call_event(call: ToolCall) -> ToolCallEvent:
    return {
        "type": "tool_call",
        "call_id": call.call_id,
        "name": call.name,
        "arguments": call.arguments,
    }
