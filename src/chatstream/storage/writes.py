"""Every change chatstream makes to its tables, as a synchronous transaction body.

Each function takes the connection of a transaction that `Database.write`
opened and commits (`storage/db.py`): on SQLite it runs whole in the writer
thread, one trip from the event loop; on PostgreSQL through `run_sync`. None
reads inside a transaction before its first write (see `db.py` for why that
matters on SQLite): `update_session` reads the row first, but on SQLite that
read is outside the transaction, which begins at the UPDATE.
`storage/repository.py` calls them and turns failures into the caller's terms.

Once per chat, so they speak SQL Core: the ORM's unit of work costs more CPU
than these few statements themselves. Session edits, rare, use the ORM.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.orm import Session

from chatstream.errors import NotFound
from chatstream.storage import attachments
from chatstream.storage.models import SessionRow, messages_table, sessions_table
from chatstream.storage.records import HistoryMessage, RunOutput

TITLE_CHARS = 80


@dataclass(slots=True)
class TurnStart:
    session_id: uuid.UUID
    session_model: str | None
    system_prompt: str | None
    user_message_id: uuid.UUID
    history: list[HistoryMessage]  # newest first, the new user message included


def title_from(message: str) -> str:
    """A session title from a message: its words on one line, at most TITLE_CHARS."""
    first_line = " ".join(message.split())
    return first_line if len(first_line) <= TITLE_CHARS else first_line[: TITLE_CHARS - 1] + "…"


# --- sessions ---------------------------------------------------------------------


def add_session(connection: Connection, row: SessionRow) -> None:
    with Session(connection) as session:
        session.add(row)
        session.flush()  # the row's pk, read back before the session lets it go


def update_session(
    connection: Connection,
    owner: str,
    session_id: uuid.UUID,
    changes: dict[str, Any],
    now: datetime,
) -> SessionRow:
    with Session(connection, expire_on_commit=False) as session:
        row = session.scalar(
            select(SessionRow).where(SessionRow.id == session_id, SessionRow.owner == owner)
        )
        if row is None:
            raise NotFound("No such session.")
        for name, value in changes.items():
            setattr(row, name, value)
        row.updated_at = now
        session.flush()
        return row


def delete_session(connection: Connection, owner: str, session_id: uuid.UUID) -> None:
    sessions, messages = sessions_table, messages_table
    # Messages first (their foreign key), of the caller's session only.
    owned = select(sessions.c.id).where(sessions.c.id == session_id, sessions.c.owner == owner)
    connection.execute(delete(messages).where(messages.c.session_id.in_(owned)))
    deleted = connection.execute(
        delete(sessions).where(sessions.c.id == session_id, sessions.c.owner == owner)
    )
    if not deleted.rowcount:
        raise NotFound("No such session.")


def set_title_if_untitled(
    connection: Connection, owner: str, session_id: uuid.UUID, title: str
) -> bool:
    sessions = sessions_table
    result = connection.execute(
        update(sessions)
        .where(sessions.c.id == session_id, sessions.c.owner == owner, sessions.c.title.is_(None))
        .values(title=title[:TITLE_CHARS])
    )
    return bool(result.rowcount)


# --- turns --------------------------------------------------------------------------


def begin_turn(
    connection: Connection,
    owner: str,
    *,
    now: datetime,
    session_id: uuid.UUID | None,
    new_session_model: str | None,
    new_session_system_prompt: str | None,
    message: str,
    history_limit: int,
    reply_id: uuid.UUID,
    runner: str | None,
    client_message_id: str | None,
    new_session_external_id: str | None,
    earlier: Sequence[HistoryMessage],
    title_from_message: bool,
    turn: HistoryMessage | None = None,
) -> TurnStart:
    """The user's message (and a new session, with `earlier`), and the history it ends.

    With `turn` the new message is that record (a tool result), after `earlier`.
    """
    sessions, messages = sessions_table, messages_table
    created = session_id is None
    if session_id is not None:
        # One statement finds the caller's session, marks its activity and
        # titles it from its first message if it has no title (without
        # `title_from_message`, a hook titles it later).
        title = title_from(message) if title_from_message else None
        untitled = {"title": func.coalesce(sessions.c.title, title)} if title else {}
        found = connection.execute(
            update(sessions)
            .where(sessions.c.id == session_id, sessions.c.owner == owner)
            .values(updated_at=now, **untitled)
            .returning(sessions.c.model, sessions.c.system_prompt)
        ).first()
        if found is None:
            raise NotFound("No such session.")
        model, system_prompt = found.model, found.system_prompt
    else:
        session_id = uuid.uuid4()
        model, system_prompt = new_session_model, new_session_system_prompt
        first_question = next((m.content for m in earlier if m.role == "user"), message)
        connection.execute(
            insert(sessions),
            {
                "id": session_id,
                "owner": owner,
                "title": title_from(first_question) if title_from_message else None,
                "model": model,
                "system_prompt": system_prompt,
                "created_at": now,
                "updated_at": now,
                "external_id": new_session_external_id,
            },
        )
    if earlier and (created or turn is not None):
        connection.execute(
            insert(messages),
            [
                {
                    "id": uuid.uuid4(),
                    "session_id": session_id,
                    "owner": owner,
                    "role": row.role,
                    "content": row.content,
                    "tool_calls": row.tool_calls,
                    "tool_call_id": row.tool_call_id,
                    "name": row.name,
                    "parts": _parts_stored(connection, row, now),
                    "status": "complete",
                    "created_at": now,
                }
                for row in earlier
            ],
        )
    user_message_id = uuid.uuid4()
    connection.execute(
        insert(messages),
        {
            "id": user_message_id,
            "session_id": session_id,
            "owner": owner,
            "role": turn.role if turn is not None else "user",
            "tool_call_id": turn.tool_call_id if turn is not None else None,
            "name": turn.name if turn is not None else None,
            "parts": _parts_stored(connection, turn, now) if turn is not None else None,
            "content": message,
            "status": "complete",
            "created_at": now,
            "client_message_id": client_message_id,
            "reply_id": reply_id,
            "runner": runner,
        },
    )
    if created:  # a new session has no history but this message (and `earlier`)
        history = [turn or HistoryMessage(role="user", content=message), *reversed(earlier)]
        history = history[:history_limit]
    else:
        history = _recent(connection, session_id, history_limit)
    return TurnStart(session_id, model, system_prompt, user_message_id, history)


def reopen_turn(
    connection: Connection,
    owner: str,
    session_id: uuid.UUID,
    user_message_id: uuid.UUID,
    history_limit: int,
    now: datetime,
) -> TurnStart:
    """The turn of a stored user message, to answer it again: its history up to it."""
    sessions, messages = sessions_table, messages_table
    found = connection.execute(
        update(sessions)
        .where(sessions.c.id == session_id, sessions.c.owner == owner)
        .values(updated_at=now)
        .returning(sessions.c.model, sessions.c.system_prompt)
    ).first()
    if found is None:
        raise NotFound("No such session.")
    anchor = connection.scalar(
        select(messages.c.pk).where(
            messages.c.id == user_message_id,
            messages.c.session_id == session_id,
            messages.c.role == "user",
        )
    )
    if anchor is None:
        raise NotFound("No such user message in this session.")
    history = _recent(connection, session_id, history_limit, up_to=anchor)
    return TurnStart(session_id, found.model, found.system_prompt, user_message_id, history)


def _recent(
    connection: Connection, session_id: uuid.UUID, limit: int, *, up_to: int | None = None
) -> list[HistoryMessage]:
    """The session's last `limit` messages (up to the one with pk `up_to`), newest first."""
    messages = messages_table
    query = select(
        messages.c.role,
        messages.c.content,
        messages.c.tool_calls,
        messages.c.tool_call_id,
        messages.c.name,
        messages.c.parts,
    ).where(messages.c.session_id == session_id)
    if up_to is not None:
        query = query.where(messages.c.pk <= up_to)
    recent = connection.execute(query.order_by(messages.c.pk.desc()).limit(limit))
    return attachments.resolve(connection, [HistoryMessage(*row) for row in recent])


def _parts_stored(connection: Connection, row: HistoryMessage, now: datetime) -> list[Any] | None:
    """A message's content parts with their payloads stored by reference (None: text only)."""
    if row.parts is None:
        return None
    parts, payloads = attachments.by_reference(row.parts)
    attachments.store(connection, payloads, now)
    return parts


# --- runs' outputs -------------------------------------------------------------------


def insert_outputs(connection: Connection, outputs: Sequence[RunOutput], now: datetime) -> None:
    """The rows of runs' outputs, in one INSERT: never an UPDATE."""
    connection.execute(
        insert(messages_table), [row for output in outputs for row in _insert_rows(output, now)]
    )


def _insert_rows(output: RunOutput, now: datetime) -> list[dict[str, Any]]:
    """A run's rows as INSERT parameters."""
    run_id = output.rows[-1].id
    return [
        {
            "id": row.id,
            "run_id": run_id,
            "session_id": output.session_id,
            "owner": output.owner,
            "role": row.role,
            "content": row.content,
            "status": row.status,
            "model": row.model,
            "finish_reason": row.finish_reason,
            "tool_calls": row.tool_calls,
            "tool_call_id": row.tool_call_id,
            "name": row.name,
            "usage": row.usage,
            "metrics": row.metrics,
            "reasoning": row.reasoning,
            "created_at": now,
        }
        for row in output.rows
    ]
