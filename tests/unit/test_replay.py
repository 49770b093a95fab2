"""Rows ↔ events: a run's events stand for exactly the rows it writes."""

from __future__ import annotations

import asyncio
import uuid

from chatstream.runs.generation import CANCELLED_TOOL
from chatstream.runs.log import MemoryEventLog
from chatstream.runs.replay import StoredRun, rows_from_events
from chatstream.tools import ToolRegistry
from tests.unit.test_run import KeptOutputs, play


def test_the_rows_of_a_tool_run_are_rebuilt_from_its_events_with_the_same_ids() -> None:
    store = KeptOutputs()
    tools = ToolRegistry.default().select(["get_current_time"])
    run = play(
        "[[fake tools=get_current_time,get_current_time preamble=2 tokens=3]] q", store, tools
    )
    (written,) = store.outputs
    rebuilt = rows_from_events(run.id, run.log.after(0), "complete")
    assert [(r.id, r.role, r.content, r.tool_call_id) for r in rebuilt] == [
        (r.id, r.role, r.content, r.tool_call_id) for r in written.rows
    ]
    assert rebuilt[0].tool_calls == written.rows[0].tool_calls


def test_a_call_left_without_its_result_gets_the_cancelled_result() -> None:
    run_id = uuid.uuid4()
    log = MemoryEventLog()
    log.append({"type": "start", "session_id": "s", "message_id": str(run_id),
                "user_message_id": "u", "model": "m"})  # fmt: skip
    log.append({"type": "delta", "text": "Let me check. "})
    for call_id in ("a", "b"):
        log.append({"type": "tool_call", "call_id": call_id, "name": "t", "arguments": "{}"})
    log.append({"type": "tool_result", "call_id": "b", "name": "t", "content": "B"})
    rows = rows_from_events(run_id, log.after(0), "interrupted")
    assert [(r.role, r.tool_call_id, r.content) for r in rows] == [
        ("assistant", None, "Let me check. "),
        ("tool", "a", CANCELLED_TOOL),
        ("tool", "b", "B"),
        ("assistant", None, ""),
    ]
    assert rows[-1].id == run_id and rows[-1].status == "interrupted"
    assert len({row.id for row in rows}) == len(rows)


def test_a_stored_run_replays_as_the_events_its_rows_stand_for() -> None:
    store = KeptOutputs()
    tools = ToolRegistry.default().select(["get_current_time"])
    run = play("[[fake tool=get_current_time preamble=2 tokens=3]] q", store, tools)
    rows = store.outputs[0].rows

    async def replay() -> list[str]:
        stored = StoredRun(run.session_id, uuid.uuid4(), rows)
        return [e.type for e in stored.log.after(0)]

    types = asyncio.run(replay())
    assert types == ["start", "delta", "tool_call", "tool_result", "delta", "done"]
    assert rows_from_events(run.id, run.log.after(0), "complete")[-1].content == rows[-1].content
