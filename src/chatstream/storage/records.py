"""Plain records crossing the storage boundary (no ORM objects leave a transaction)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar


@dataclass(slots=True, frozen=True)
class HistoryMessage:
    """A stored message as the context builder needs it."""

    role: str
    content: str
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    # Content parts as sent, when not only text (images, audio, files: storage/attachments.py).
    parts: list[Any] | None = None


@dataclass(frozen=True, slots=True)
class Parent:
    """Where a new message goes instead of after the session's active leaf: under
    `message_id`, or (None) as a new first message: an edit is a sibling of the
    message it edits."""

    message_id: uuid.UUID | None


@dataclass(slots=True)
class OutputRow:
    """One message row a run produced, as it will be written."""

    id: uuid.UUID
    role: str
    content: str
    status: str
    model: str | None = None
    finish_reason: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    usage: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    reasoning: str | None = None  # the model's, kept apart from `content`


@dataclass(slots=True)
class RunOutput:
    """Everything a run writes, in one transaction, in this order."""

    owner: str
    session_id: uuid.UUID
    rows: list[OutputRow] = field(default_factory=list)
    # The message the run answers (the first row's parent): the user's message, or the
    # client's tool results. None only for outputs kept before messages had parents:
    # the writer then finds it by the run's id (`reply_id`).
    parent_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class OrphanedReply:
    """A user message whose answer was never written."""

    owner: str
    session_id: uuid.UUID
    reply_id: uuid.UUID
    user_message_id: uuid.UUID  # the message never answered (the reply's parent)


T = TypeVar("T")


@dataclass(slots=True)
class Page(Generic[T]):
    """One page of a listing, and where the next one starts (None: this is the last)."""

    items: list[T]
    next_cursor: str | None
