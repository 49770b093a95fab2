"""Every change chatstream makes to its tables, as a synchronous transaction body.

Each function takes the connection of a transaction that `Database.write`
opened and commits (`storage/db.py`): on SQLite it runs whole in the writer
thread, one trip from the event loop; on PostgreSQL through `run_sync`. None
reads inside a transaction before its first write (see `db.py` for why that
matters on SQLite): `update_session` and `begin_turn` read the session row
first, but on SQLite that read is outside the transaction, which begins at
the UPDATE (and no other write of this process can come in between: they all
go through the one writer thread).
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

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from chatstream.errors import NotFound
from chatstream.storage import attachments, branches
from chatstream.storage.models import SessionRow, messages_table, sessions_table
from chatstream.storage.records import HistoryMessage, Parent, RunOutput

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
    parent: Parent | None = None,
    request_options: dict[str, Any] | None = None,
) -> TurnStart:
    """The user's message (and a new session, with `earlier`), and the history it ends.

    With `turn` the new message is that record (a tool result), after `earlier`.
    The new rows follow the session's active leaf, or `parent`; the session's
    leaf becomes the answer to come (`reply_id`: see `branches.leaf`).
    """
    sessions, messages = sessions_table, messages_table
    created = session_id is None
    follows: uuid.UUID | None = None
    if session_id is not None:
        # Locked (on PostgreSQL; on SQLite the one writer thread is the lock)
        # from reading the leaf the message follows to moving it on.
        found = connection.execute(
            select(
                sessions.c.model,
                sessions.c.system_prompt,
                branches.leaf(session_id, sessions.c.active_leaf_id).label("leaf"),
            )
            .where(sessions.c.id == session_id, sessions.c.owner == owner)
            .with_for_update(of=sessions)
        ).first()
        if found is None:
            raise NotFound("No such session.")
        model, system_prompt, follows = found.model, found.system_prompt, found.leaf
        if parent is not None:
            follows = _parent_in(connection, session_id, parent)
        # One statement marks the session's activity, moves its leaf to the
        # coming answer and titles it from its first message if it has no title
        # (without `title_from_message`, a hook titles it later).
        title = title_from(message) if title_from_message else None
        untitled = {"title": func.coalesce(sessions.c.title, title)} if title else {}
        connection.execute(
            update(sessions)
            .where(sessions.c.id == session_id)
            .values(updated_at=now, active_leaf_id=reply_id, **untitled)
        )
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
                "active_leaf_id": reply_id,
            },
        )
    if earlier and (created or turn is not None):
        rows: list[dict[str, Any]] = []
        for row in earlier:
            row_id = uuid.uuid4()
            rows.append(
                {
                    "id": row_id,
                    "parent_id": follows,
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
            )
            follows = row_id
        connection.execute(insert(messages), rows)
    user_message_id = uuid.uuid4()
    connection.execute(
        insert(messages),
        {
            "id": user_message_id,
            "parent_id": follows,
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
            "request_options": request_options,
        },
    )
    if created:  # a new session has no history but this message (and `earlier`)
        history = [turn or HistoryMessage(role="user", content=message), *reversed(earlier)]
        history = history[:history_limit]
    else:
        history = _branch(connection, session_id, user_message_id, history_limit)
    return TurnStart(session_id, model, system_prompt, user_message_id, history)


def _parent_in(connection: Connection, session_id: uuid.UUID, parent: Parent) -> uuid.UUID | None:
    """`parent`'s message, checked to be one of the session's."""
    if parent.message_id is None:
        return None
    messages = messages_table
    found = connection.scalar(
        select(messages.c.id).where(
            messages.c.id == parent.message_id, messages.c.session_id == session_id
        )
    )
    if found is None:
        raise NotFound("The message to branch from is not in this session.")
    return parent.message_id


def reopen_turn(
    connection: Connection,
    owner: str,
    session_id: uuid.UUID,
    question_id: uuid.UUID,
    reply_id: uuid.UUID,
    history_limit: int,
    now: datetime,
) -> TurnStart:
    """The turn of a stored user message (or tool results), to answer it again: its
    history is its branch up to it; the new answer is a sibling of the earlier ones
    and the session's leaf."""
    sessions, messages = sessions_table, messages_table
    found = connection.execute(
        update(sessions)
        .where(sessions.c.id == session_id, sessions.c.owner == owner)
        .values(updated_at=now, active_leaf_id=reply_id)
        .returning(sessions.c.model, sessions.c.system_prompt)
    ).first()
    if found is None:
        raise NotFound("No such session.")
    # The question now awaits this answer: until it is written, the branch ends at the
    # question (`branches.leaf`). No runner: an answer again that never lands leaves
    # the earlier ones, not a question to finish as interrupted at recovery.
    reopened = connection.execute(
        update(messages)
        .where(
            messages.c.id == question_id,
            messages.c.session_id == session_id,
            messages.c.role.in_(("user", "tool")),
        )
        .values(reply_id=reply_id, runner=None)
    )
    if not reopened.rowcount:
        raise NotFound("No such user message in this session.")
    history = _branch(connection, session_id, question_id, history_limit)
    return TurnStart(session_id, found.model, found.system_prompt, question_id, history)


def _branch(
    connection: Connection, session_id: uuid.UUID, last: uuid.UUID, limit: int
) -> list[HistoryMessage]:
    """`last` and the messages before it on its branch, at most `limit`, newest first."""
    messages = messages_table
    path = branches.path_up(session_id, last, limit)
    query = (
        select(
            messages.c.role,
            messages.c.content,
            messages.c.tool_calls,
            messages.c.tool_call_id,
            messages.c.name,
            messages.c.parts,
        )
        .join(path, messages.c.id == path.c.id)
        .order_by(path.c.depth)
    )
    recent = connection.execute(query)
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
    """The rows of runs' outputs, in one INSERT: never an UPDATE (but for outputs kept
    from before messages had parents, linked to their question afterwards)."""
    connection.execute(
        insert(messages_table), [row for output in outputs for row in _insert_rows(output, now)]
    )
    unlinked = [output for output in outputs if output.parent_id is None]
    if unlinked:
        _link_to_question(connection, unlinked)


def _insert_rows(output: RunOutput, now: datetime) -> list[dict[str, Any]]:
    """A run's rows as INSERT parameters: each follows the one before, the first the
    message the run answers."""
    run_id = output.rows[-1].id
    parents = [output.parent_id, *(row.id for row in output.rows[:-1])]
    return [
        {
            "id": row.id,
            "parent_id": parent,
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
        for row, parent in zip(output.rows, parents, strict=True)
    ]


def _link_to_question(connection: Connection, outputs: Sequence[RunOutput]) -> None:
    """The first row of each output under the message awaiting its run (`reply_id`)."""
    messages = messages_table
    question = messages.alias("question")
    connection.execute(
        update(messages)
        .where(messages.c.id == bindparam("first"))
        .values(
            parent_id=select(question.c.id)
            .where(
                question.c.reply_id == bindparam("run"),
                question.c.session_id == bindparam("session"),
            )
            .limit(1)
            .scalar_subquery()
        ),
        [
            {"first": output.rows[0].id, "run": output.rows[-1].id, "session": output.session_id}
            for output in outputs
        ],
    )
