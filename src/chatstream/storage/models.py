"""Tables. The schema itself is created only by Alembic migrations.

Both tables carry an integer `pk` that orders rows by insertion (pagination
cursors and message order rest on it) beside the public UUID `id`. `owner`
is on every row so that every lookup can be scoped to the caller in SQL.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    TypeDecorator,
    Uuid,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

PrimaryKey = BigInteger().with_variant(Integer, "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, also on SQLite (which stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class SessionRow(Base):
    __tablename__ = "sessions"

    pk: Mapped[int] = mapped_column(PrimaryKey, primary_key=True, autoincrement=True)
    id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    owner: Mapped[str] = mapped_column(String(255))
    title: Mapped[str | None] = mapped_column(String(200))
    model: Mapped[str | None] = mapped_column(String(200))
    system_prompt: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # A client's own name for the conversation (the AI SDK's chat id), unique per owner.
    external_id: Mapped[str | None] = mapped_column(String(200))
    # The last message of the branch the session shows and continues (messages form a tree).
    active_leaf_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)

    # Listed most recently active first (GET /api/sessions).
    __table_args__ = (
        Index("ix_sessions_owner_updated", "owner", "updated_at", "pk"),
        Index("ux_sessions_owner_external_id", "owner", "external_id", unique=True),
    )


class MessageRow(Base):
    __tablename__ = "messages"

    pk: Mapped[int] = mapped_column(PrimaryKey, primary_key=True, autoincrement=True)
    id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    session_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("sessions.id", ondelete="CASCADE")
    )
    owner: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    # An answer's reasoning (the model's thinking), never mixed into `content`.
    reasoning: Mapped[str | None] = mapped_column(Text)
    # What a Responses request asked beyond its input (instructions, tools,
    # metadata, ...), kept on the message it sent, so the response is read back
    # as it was created.
    request_options: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(String(200))
    finish_reason: Mapped[str | None] = mapped_column(String(64))
    tool_calls: Mapped[list[Any] | None] = mapped_column(JSON)
    tool_call_id: Mapped[str | None] = mapped_column(String(255))
    name: Mapped[str | None] = mapped_column(String(255))
    # Content parts as sent when not only text, payloads by reference (storage/attachments.py).
    parts: Mapped[list[Any] | None] = mapped_column(JSON)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # On user messages: the client's idempotency key, and the run the message started.
    client_message_id: Mapped[str | None] = mapped_column(String(200))
    reply_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # The instance generating the reply (see storage.spool), for crash recovery.
    runner: Mapped[str | None] = mapped_column(String(64))
    # On the rows a run wrote (tool rounds and answer): the run, i.e. the answer's id.
    run_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # The message this one follows; siblings share a parent (edits, regenerations).
    parent_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)

    __table_args__ = (
        Index("ix_messages_session_pk", "session_id", "pk"),
        Index("ix_messages_owner", "owner"),
        Index("ux_messages_owner_client_message_id", "owner", "client_message_id", unique=True),
        Index("ix_messages_runner", "runner"),
        Index("ix_messages_run_id", "run_id"),
        Index("ix_messages_parent_id", "parent_id"),
    )


# The tables, for the hot paths that speak SQL Core rather than the ORM.
sessions_table = cast(Table, SessionRow.__table__)
messages_table = cast(Table, MessageRow.__table__)
