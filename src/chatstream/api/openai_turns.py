"""A `/v1` request's messages → the turn chatstream starts: what is new, what is kept.

    no session   `messages` is the whole context, sent to the model as given
                 (`Turn.context`; over CHATSTREAM_HISTORY_CHARS is a 400): system
                 and developer messages become the new session's system prompt,
                 the others its first rows, the last (the user's, or a tool's
                 result) the turn's message
    a session    its stored history is the context; only the new messages are
                 taken: the last user message, or the trailing tool results

A message is kept as a `HistoryMessage`: its text, its tool calls, the call a
tool result answers, and content parts beyond text (stored by reference,
`storage/attachments.py`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from chatstream.api.openai_requests import CompletionMessage, ImageContentPart, TextContentPart
from chatstream.errors import InvalidRequest
from chatstream.runs.service import TurnShape
from chatstream.storage.records import HistoryMessage


def _text(message: CompletionMessage) -> str:
    """The message's text; for one of images, audio or files alone, what they are."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    text = "\n".join(part.text for part in content if isinstance(part, TextContentPart))
    return text or " ".join(f"[{part.type}]" for part in content)


def _parts(message: CompletionMessage) -> list[Any] | None:
    """The content parts as sent, when there is more than text in them."""
    content = message.content
    if not isinstance(content, list) or all(isinstance(p, TextContentPart) for p in content):
        return None
    return [part.model_dump(mode="json", exclude_unset=True) for part in content]


def check_vision(messages: list[CompletionMessage], model: str, blind: list[str]) -> None:
    if model not in blind:
        return
    for index, message in enumerate(messages):
        for position, part in enumerate(message.content or ()):
            if isinstance(part, ImageContentPart):
                raise InvalidRequest(
                    f"The model '{model}' does not take images (CHATSTREAM_MODELS_WITHOUT_VISION"
                    "); send text, or ask a model that sees them.",
                    details=[{"loc": ["body", "messages", index, "content", position]}],
                )


def _record(message: CompletionMessage) -> HistoryMessage:
    """A message as it is stored (and replayed from the session's history)."""
    calls = [
        {
            "id": call.id,
            "type": "function",
            "function": {"name": call.function.name, "arguments": call.function.arguments},
        }
        for call in message.tool_calls or ()
    ]
    return HistoryMessage(
        role=message.role,
        content=_text(message),
        tool_calls=calls or None,
        tool_call_id=message.tool_call_id,
        name=message.name if message.role == "tool" else None,
        parts=_parts(message),
    )


def _chars(message: CompletionMessage) -> int:
    size = len(_text(message))
    for call in message.tool_calls or ():
        size += len(call.function.name) + len(call.function.arguments)
    return size


@dataclass(frozen=True, slots=True)
class Turn:
    message: str  # the new message's text
    system_prompt: str | None
    shape: TurnShape
    context: list[dict[str, Any]] | None  # the whole context as sent (no session)


def turn_of(messages: list[CompletionMessage], continuing: bool, max_chars: int) -> Turn:
    """The new message(s); without a session, the context as sent and what the session keeps."""
    last = messages[-1]
    if last.role not in ("user", "tool"):
        raise InvalidRequest(
            "The last message must be the user's or a tool result: it is the one answered.",
            details=[{"loc": ["body", "messages", len(messages) - 1, "role"]}],
        )
    if continuing:
        # The stored history has the rest; the round's results are all new.
        new = [last]
        if last.role == "tool":
            new = list(itertools.takewhile(lambda m: m.role == "tool", reversed(messages)))
            new.reverse()
        shape = TurnShape(
            earlier=tuple(_record(m) for m in new[:-1]),
            turn=_record(last) if last.role == "tool" or _parts(last) else None,
        )
        return Turn(_text(last), None, shape, None)
    chars = sum(_chars(m) for m in messages if m.role not in ("system", "developer"))
    if chars > max_chars:
        raise InvalidRequest(
            f"The messages are {chars} characters; at most {max_chars} "
            "(CHATSTREAM_HISTORY_CHARS, the system prompt not counted) reach the model. "
            "Send fewer or shorter messages, or continue a session with "
            "X-Chatstream-Session-Id.",
            details=[{"loc": ["body", "messages"]}],
        )
    given = messages[:-1]
    system = [_text(m) for m in given if m.role in ("system", "developer")]
    shape = TurnShape(
        earlier=tuple(_record(m) for m in given if m.role not in ("system", "developer")),
        turn=_record(last) if last.role == "tool" or _parts(last) else None,
    )
    context = [m.model_dump(mode="json", exclude_unset=True) for m in messages]
    return Turn(_text(last), "\n\n".join(system) or None, shape, context)
