"""Which history goes upstream: the system prompt plus the most recent turns.

Budgets (the contract, section 1): at most `max_messages` messages and
`max_chars` characters, counting every non-system message sent, the new user
message included; the oldest go first; the new user message is always sent
and the system prompt is always sent and never counted.

Three more rules keep the upstream from rejecting what we send: assistant
rows with neither text nor tool calls (a run that failed before its first
token) are skipped; a `tool` row is never sent without the assistant row
whose call it answers; and an assistant row's tool calls are sent only when
the `tool` rows right after it answer every one (a client that called its
own tools may send a new message instead of their results): otherwise it
goes as its text alone, and the partial results not at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from chatstream.storage.records import HistoryMessage


def _chars(message: HistoryMessage) -> int:
    size = len(message.content)
    for call in message.tool_calls or ():
        function = call.get("function") or {}
        size += len(str(function.get("name") or "")) + len(str(function.get("arguments") or ""))
    return size


def _as_upstream(message: HistoryMessage) -> dict[str, Any]:
    upstream: dict[str, Any] = {"role": message.role, "content": message.parts or message.content}
    if message.tool_calls:
        upstream["tool_calls"] = message.tool_calls
        if not message.content:
            upstream["content"] = None
    if message.role == "tool":
        upstream["tool_call_id"] = message.tool_call_id
    return upstream


def build_context(
    system_prompt: str | None,
    newest_first: Sequence[HistoryMessage],
    *,
    max_messages: int,
    max_chars: int,
) -> list[dict[str, Any]]:
    """`newest_first[0]` is the new user message; the rest is older history."""
    chosen: list[HistoryMessage] = []
    chars = 0
    for index, message in enumerate(newest_first):
        if message.role == "assistant" and not message.content and not message.tool_calls:
            continue
        if index > 0 and (len(chosen) >= max_messages or chars + _chars(message) > max_chars):
            break
        chosen.append(message)
        chars += _chars(message)
    chosen.reverse()
    # Drop tool results whose call fell outside the window.
    while chosen and chosen[0].role == "tool":
        chosen.pop(0)
    context = [{"role": "system", "content": system_prompt}] if system_prompt else []
    context.extend(_as_upstream(message) for message in _answered_calls_only(chosen))
    return context


def _answered_calls_only(chosen: list[HistoryMessage]) -> list[HistoryMessage]:
    """`chosen`, oldest first, with every unanswered round's calls and results left out."""
    kept: list[HistoryMessage] = []
    index = 0
    while index < len(chosen):
        message = chosen[index]
        index += 1
        if message.role != "assistant" or not message.tool_calls:
            kept.append(message)
            continue
        results = []
        while index < len(chosen) and chosen[index].role == "tool":
            results.append(chosen[index])
            index += 1
        called = {call.get("id") for call in message.tool_calls}
        if called <= {result.tool_call_id for result in results}:
            kept.append(message)
            kept.extend(results)
        elif message.content:
            kept.append(dataclasses.replace(message, tool_calls=None))
    return kept
