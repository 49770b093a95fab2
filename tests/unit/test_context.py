"""History budgets, with no database."""

from __future__ import annotations

from chatstream.runs.context import build_context
from chatstream.storage.records import HistoryMessage


def newest_first(*messages: HistoryMessage) -> list[HistoryMessage]:
    return list(reversed(messages))


U = lambda text: HistoryMessage("user", text)  # noqa: E731
A = lambda text: HistoryMessage("assistant", text)  # noqa: E731


def test_message_budget_counts_the_new_message_and_drops_the_oldest() -> None:
    history = newest_first(U("1"), A("2"), U("3"), A("4"), U("5"))
    context = build_context("sys", history, max_messages=3, max_chars=1000)
    assert context == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "3"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "5"},
    ]


def test_character_budget_excludes_the_system_prompt() -> None:
    history = newest_first(U("a" * 50), A("b" * 50), U("c" * 50))
    context = build_context("s" * 1000, history, max_messages=10, max_chars=100)
    assert [m["content"] for m in context[1:]] == ["b" * 50, "c" * 50]


def test_new_message_is_always_sent() -> None:
    context = build_context(None, [U("x" * 500)], max_messages=1, max_chars=10)
    assert context == [{"role": "user", "content": "x" * 500}]


def test_empty_failed_answers_are_skipped_and_not_counted() -> None:
    history = newest_first(U("1"), A(""), U("2"))
    context = build_context(None, history, max_messages=2, max_chars=100)
    assert context == [{"role": "user", "content": "1"}, {"role": "user", "content": "2"}]


def test_tool_rows_never_arrive_without_their_call() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "t", "arguments": "{}"}}
    history = newest_first(
        U("q"),
        HistoryMessage("assistant", "", tool_calls=[call]),
        HistoryMessage("tool", "result", tool_call_id="c1", name="t"),
        A("answer"),
        U("next"),
    )
    # A window of three would start at the tool row: it is dropped with its call.
    assert build_context(None, history, max_messages=3, max_chars=1000) == [
        {"role": "assistant", "content": "answer"},
        {"role": "user", "content": "next"},
    ]
    full = build_context(None, history, max_messages=10, max_chars=1000)
    assert full[1] == {"role": "assistant", "content": None, "tool_calls": [call]}
    assert full[2] == {"role": "tool", "content": "result", "tool_call_id": "c1"}
