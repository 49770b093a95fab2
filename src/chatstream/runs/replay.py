"""A repeated request (same `client_message_id`) gets the first run's events.

While the first run is known to the registry, the repeat simply follows it
from its first event. Once it has left memory (after
`CHATSTREAM_RUN_RETENTION_S`), its events are gone but its rows are saved:
`StoredRun` replays them as a condensed stream through the same `RunHandle`
interface, so every transport serves it unchanged: `start`; for each tool
round its reasoning as one `reasoning`, its text as one `delta`, its
`tool_call`s and `tool_result`s; the answer's reasoning and text the same
way; an `error` if it ended in one; `done`. Its
deltas concatenate to the stored assistant rows, as a live replay's do.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import Any

from chatstream.runs.events import ErrorEvent, Event, MessageStatus, ToolCallEvent
from chatstream.runs.generation import CANCELLED_TOOL
from chatstream.runs.handle import RunState
from chatstream.runs.log import MemoryEventLog, Pusher
from chatstream.runs.spec import round_row_id, tool_row_id
from chatstream.storage.records import OutputRow


class StoredRun:
    """An ended run, rebuilt from its stored rows (the answer last)."""

    def __init__(
        self, session_id: uuid.UUID, user_message_id: uuid.UUID, rows: Sequence[OutputRow]
    ) -> None:
        answer = rows[-1]
        self.id = answer.id
        self.session_id = session_id
        self.status: MessageStatus = answer.status  # type: ignore[assignment]
        self.error: ErrorEvent | None = None
        self.log = log = MemoryEventLog()
        log.append(
            {
                "type": "start",
                "session_id": str(session_id),
                "message_id": str(answer.id),
                "user_message_id": str(user_message_id),
                "model": answer.model or "",
            }
        )
        for row in rows:
            if row.reasoning and row.role == "assistant":
                log.append({"type": "reasoning", "text": row.reasoning})
            if row.content and row.role == "assistant":
                log.append({"type": "delta", "text": row.content})
            if row.role == "assistant":
                for call in row.tool_calls or ():
                    function = call.get("function") or {}
                    event: ToolCallEvent = {
                        "type": "tool_call",
                        "call_id": str(call.get("id") or ""),
                        "name": str(function.get("name") or ""),
                        "arguments": str(function.get("arguments") or ""),
                    }
                    if row is answer:  # the answer's own calls: the client's tools
                        event["client"] = True
                    log.append(event)
            elif row.role == "tool":
                log.append(
                    {
                        "type": "tool_result",
                        "call_id": row.tool_call_id or "",
                        "name": row.name or "",
                        "content": row.content,
                    }
                )
        if self.status in ("error", "interrupted"):
            self.error = {
                "type": "error",
                "code": "server_shutdown" if self.status == "interrupted" else "upstream_error",
                "message": "The answer ended early; this is what was saved.",
                "retryable": True,
            }
            log.append(self.error)
        log.append(
            {
                "type": "done",
                "message_id": str(answer.id),
                "status": self.status,
                "finish_reason": answer.finish_reason,
                "persisted": True,
                "usage": answer.usage,  # type: ignore[typeddict-item]
                "metrics": answer.metrics,  # type: ignore[typeddict-item]
            }
        )

    async def state(self) -> RunState:
        return RunState(self.status, self.log.last_seq)

    async def cancel(self, status: MessageStatus = "cancelled") -> bool:
        return False

    @asynccontextmanager
    async def follow(
        self, after: int = 0, idle_timeout: float | None = None, push: Pusher | None = None
    ) -> AsyncIterator[AsyncIterator[list[Event]]]:
        async with aclosing(self.log.follow(after, idle_timeout or math.inf, push)) as events:
            yield events

    async def wait(self) -> None:
        return None


def rows_from_events(
    run_id: uuid.UUID, events: Sequence[Event], status: MessageStatus
) -> list[OutputRow]:
    """The rows a run's events stand for (the inverse of `StoredRun`), the answer last.

    For a run ended from its log alone (its instance died): each tool round's
    text and calls, then a result row per call (a call the run did not live to
    answer gets the same "ended before the tool finished" result a cancelled
    round does, so the history never holds a call without its result), then
    the answer's text, with `status` (and the calls of the client's own tools,
    which no result follows: they are the answer). Row ids are the ones the
    run itself would have written.
    """
    model: str | None = None
    text: list[str] = []
    reasoning: list[str] = []
    rounds: list[tuple[OutputRow, list[str]]] = []  # each round's row and its call ids
    client_calls: list[dict[str, Any]] = []  # the answer's: calls of the client's tools
    results: dict[tuple[int, str], OutputRow] = {}
    calling = False  # between a round's first call and its first result
    for event in events:
        data = event.data
        if data["type"] == "start":
            model = data["model"]
        elif data["type"] == "delta":
            text.append(data["text"])
        elif data["type"] == "reasoning":
            reasoning.append(data["text"])
        elif data["type"] == "tool_call" and data.get("client"):
            client_calls.append(
                {
                    "id": data["call_id"],
                    "type": "function",
                    "function": {"name": data["name"], "arguments": data["arguments"]},
                }
            )
        elif data["type"] == "tool_call":
            if not calling:
                calling = True
                row = OutputRow(
                    id=round_row_id(run_id, len(rounds)),
                    role="assistant",
                    content="".join(text),
                    status="complete",
                    model=model,
                    finish_reason="tool_calls",
                    tool_calls=[],
                    reasoning="".join(reasoning) or None,
                )
                rounds.append((row, []))
                text, reasoning = [], []
            row, call_ids = rounds[-1]
            assert row.tool_calls is not None
            row.tool_calls.append(
                {
                    "id": data["call_id"],
                    "type": "function",
                    "function": {"name": data["name"], "arguments": data["arguments"]},
                }
            )
            call_ids.append(data["call_id"])
        elif data["type"] == "tool_result":
            calling = False
            round_index = len(rounds) - 1
            results[round_index, data["call_id"]] = OutputRow(
                id=uuid.uuid4(),  # replaced below by the call's own id
                role="tool",
                content=data["content"],
                status="complete",
                tool_call_id=data["call_id"],
                name=data["name"],
            )
    rows: list[OutputRow] = []
    for round_index, (row, call_ids) in enumerate(rounds):
        rows.append(row)
        assert row.tool_calls is not None
        for call_index, (call_id, call) in enumerate(zip(call_ids, row.tool_calls, strict=True)):
            result = results.get((round_index, call_id)) or OutputRow(
                id=uuid.uuid4(),
                role="tool",
                content=CANCELLED_TOOL,
                status="complete",
                tool_call_id=call_id,
                name=str(call["function"]["name"]),
            )
            result.id = tool_row_id(run_id, round_index, call_index)
            rows.append(result)
    rows.append(
        OutputRow(
            id=run_id,
            role="assistant",
            content="".join(text),
            status=status,
            model=model,
            finish_reason="tool_calls" if client_calls else None,
            tool_calls=client_calls or None,
            reasoning="".join(reasoning) or None,
        )
    )
    return rows
