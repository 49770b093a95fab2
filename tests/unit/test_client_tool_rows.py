"""Calls of a client's own tools (`/v1`), with no database: what is rebuilt, what is sent."""

from __future__ import annotations

import uuid
from typing import Any

from chatstream.runs.context import build_context
from chatstream.runs.log import MemoryEventLog
from chatstream.runs.replay import StoredRun, rows_from_events
from chatstream.storage.records import HistoryMessage


def call(call_id: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": "f", "arguments": "{}"}}


def test_a_run_ended_from_its_log_keeps_the_clients_calls_on_its_answer() -> None:
    run_id = uuid.uuid4()
    log = MemoryEventLog()
    log.append({"type": "start", "session_id": "s", "message_id": str(run_id),
                "user_message_id": "u", "model": "m"})  # fmt: skip
    log.append({"type": "delta", "text": "Calling. "})
    for call_id in ("a", "b"):
        log.append(
            {
                "type": "tool_call",
                "call_id": call_id,
                "name": "f",
                "arguments": "{}",
                "client": True,
            }
        )
    rows = rows_from_events(run_id, log.after(0), "interrupted")

    # One row, the answer: no tool round, no made-up results (the client runs its tools).
    assert [(r.id, r.role, r.content) for r in rows] == [(run_id, "assistant", "Calling. ")]
    assert rows[0].tool_calls == [call("a"), call("b")]
    assert rows[0].finish_reason == "tool_calls"

    # Replayed, the answer's calls are the client's again.
    replayed = StoredRun(uuid.uuid4(), uuid.uuid4(), rows).log.after(0)
    calls = [e.data for e in replayed if e.data["type"] == "tool_call"]
    assert [c.get("client") for c in calls] == [True, True]


def test_calls_the_client_never_answered_are_not_sent_again() -> None:
    history = [
        HistoryMessage("user", "weather?"),
        HistoryMessage("assistant", "Checking.", tool_calls=[call("a"), call("b")]),
        HistoryMessage("tool", "sunny", tool_call_id="a"),  # b was never answered
        HistoryMessage("user", "never mind"),
        HistoryMessage("assistant", "", tool_calls=[call("c")]),
        HistoryMessage("user", "thanks"),
    ]
    context = build_context(None, list(reversed(history)), max_messages=10, max_chars=1000)
    assert context == [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "Checking."},
        {"role": "user", "content": "never mind"},
        {"role": "user", "content": "thanks"},
    ]


def test_answered_calls_are_sent_with_their_results() -> None:
    history = [
        HistoryMessage("user", "weather?"),
        HistoryMessage("assistant", "", tool_calls=[call("a"), call("b")]),
        HistoryMessage("tool", "B", tool_call_id="b"),
        HistoryMessage("tool", "A", tool_call_id="a"),
    ]
    context = build_context(None, list(reversed(history)), max_messages=10, max_chars=1000)
    assert [m["role"] for m in context] == ["user", "assistant", "tool", "tool"]
    assert context[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [call("a"), call("b")],
    }
