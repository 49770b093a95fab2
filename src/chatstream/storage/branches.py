"""Messages form a tree; a session shows and continues one branch of it.

Every message has a parent (`parent_id`), the message it follows: a user
message's parent is the answer it replies to, an answer's (a run's first
row) is the message it answers, each later row of a run follows the one
before it. Messages with one parent are siblings: the edits of a user
message, the regenerations of an answer. A session's active leaf
(`sessions.active_leaf_id`) ends its active branch, the path from a root to
it: that is what `GET /api/sessions/{id}/messages` shows and what the model
is given as context, and a new message follows the leaf.

The stored leaf is set when a turn begins, to the id its answer will have
(see `leaf`), and by a switch; the run's final write stays INSERTs only. A
session whose leaf is unset has its last message as its leaf. Paths are read
with a recursive query up the parent links, bounded by how many rows are
wanted, so a long session costs what its page costs.

The write transactions (`storage/writes.py`) use `path_up` and `leaf`; the
API reads through `Branches`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    CTE,
    Connection,
    Select,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)

from chatstream.errors import NotFound
from chatstream.storage.db import Database
from chatstream.storage.models import MessageRow, SessionRow, messages_table, sessions_table
from chatstream.storage.outages import outage_is_unavailable
from chatstream.storage.records import Page

# Longer than any branch (a guard against a cycle, which no write makes).
WHOLE_BRANCH = 1_000_000
# A run's rows, and the rows the message it answers may come with (tool results).
TURN_DEPTH = 1_000


def path_up(session_id: uuid.UUID, start: Any, limit: int) -> CTE:
    """`(id, depth)` of `start` (an id, or a scalar subquery) and its ancestors, at most
    `limit` rows: depth 0 is `start`, 1 its parent, and so on."""
    messages = messages_table
    path = (
        select(messages.c.id, messages.c.parent_id, literal(0).label("depth"))
        .where(messages.c.id == start, messages.c.session_id == session_id)
        .cte("path", recursive=True)
    )
    parent = messages.alias("parent")
    return path.union_all(
        select(parent.c.id, parent.c.parent_id, path.c.depth + 1).where(
            parent.c.id == path.c.parent_id,
            parent.c.session_id == session_id,
            path.c.depth < limit - 1,
        )
    )


def last_message(session_id: uuid.UUID) -> Any:
    """The session's most recent message's id, as a scalar subquery."""
    messages = messages_table
    return (
        select(messages.c.id)
        .where(messages.c.session_id == session_id)
        .order_by(messages.c.pk.desc())
        .limit(1)
        .scalar_subquery()
    )


def leaf(session_id: uuid.UUID, stored: Any) -> Any:
    """The message that ends the active branch, as an SQL expression, from the stored
    leaf (a value, or the `sessions.active_leaf_id` column).

    The stored leaf is the answer of the session's latest run, named before it
    is written (its id is the run's): until the run's rows land (live, or kept
    in the spool) the branch ends at the message it answers, the one whose
    `reply_id` it is. Unset, the leaf is the last message written.
    """
    if stored is None:  # (compared with None, SQLAlchemy would write IS NULL)
        return last_message(session_id)
    messages = messages_table
    written = (
        select(messages.c.id)
        .where(messages.c.id == stored, messages.c.session_id == session_id)
        .scalar_subquery()
    )
    answering = (
        select(messages.c.id)
        .where(messages.c.reply_id == stored, messages.c.session_id == session_id)
        .limit(1)
        .scalar_subquery()
    )
    return func.coalesce(written, answering, last_message(session_id))


@dataclass(frozen=True, slots=True)
class BranchMessage:
    """A message of the active branch, with its siblings (itself among them, oldest first)."""

    row: MessageRow
    sibling_ids: list[uuid.UUID]

    @property
    def sibling_index(self) -> int:
        return self.sibling_ids.index(self.row.id)


class Branches:
    """The reads and moves of a session's branches, each scoped to the caller's owner id."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @outage_is_unavailable
    async def page(
        self, owner: str, session_id: uuid.UUID, *, limit: int, before: uuid.UUID | None
    ) -> Page[BranchMessage]:
        """The active branch's last `limit` messages (before `before`, on its branch)."""
        async with self._db.reader() as db:
            session = await db.scalar(_owned_session(owner, session_id))
            if session is None:
                raise NotFound("No such session.")
            start: Any
            if before is not None:
                start = await db.scalar(
                    select(MessageRow.parent_id).where(
                        MessageRow.id == before, MessageRow.session_id == session_id
                    )
                )
                if start is None and not await db.scalar(
                    select(
                        exists().where(MessageRow.id == before, MessageRow.session_id == session_id)
                    )
                ):
                    raise NotFound("`before` is not a message of this session.")
            else:
                start = leaf(session_id, session.active_leaf_id)
            rows: list[MessageRow] = []
            if start is not None:
                path = path_up(session_id, start, limit + 1)
                rows = list(
                    await db.scalars(
                        select(MessageRow)
                        .join(path, MessageRow.id == path.c.id)
                        .order_by(path.c.depth.desc())
                    )
                )
            more = len(rows) > limit
            rows = rows[1:] if more else rows
            siblings = await _siblings(db, session_id, rows)
        items = [BranchMessage(row, siblings[row.parent_id]) for row in rows]
        return Page(items, str(rows[0].id) if more else None)

    @outage_is_unavailable
    async def message(self, owner: str, session_id: uuid.UUID, message_id: uuid.UUID) -> MessageRow:
        async with self._db.reader() as db:
            row = await db.scalar(
                select(MessageRow).where(
                    MessageRow.id == message_id,
                    MessageRow.session_id == session_id,
                    MessageRow.owner == owner,
                )
            )
        if row is None:
            raise NotFound("No such message in this session.")
        return row

    @outage_is_unavailable
    async def question_of(
        self, owner: str, session_id: uuid.UUID, message_id: uuid.UUID | None
    ) -> MessageRow | None:
        """The message an answer answers: the nearest user message or client tool result
        at or above `message_id` (any row of a run, or that message itself; None: the
        active leaf). None if there is none (a context given without a question)."""
        async with self._db.reader() as db:
            if message_id is None:
                session = await db.scalar(_owned_session(owner, session_id))
                if session is None:
                    raise NotFound("No such session.")
                start: Any = leaf(session_id, session.active_leaf_id)
            else:
                start = (await self.message(owner, session_id, message_id)).id
            path = path_up(session_id, start, TURN_DEPTH)
            return await db.scalar(
                select(MessageRow)
                .join(path, MessageRow.id == path.c.id)
                .where(MessageRow.role.in_(("user", "tool")), MessageRow.run_id.is_(None))
                .order_by(path.c.depth)
                .limit(1)
            )

    @outage_is_unavailable
    async def questions(self, owner: str, session_id: uuid.UUID) -> list[MessageRow]:
        """The user messages of the active branch, oldest first."""
        async with self._db.reader() as db:
            session = await db.scalar(_owned_session(owner, session_id))
            if session is None:
                raise NotFound("No such session.")
            path = path_up(session_id, leaf(session_id, session.active_leaf_id), WHOLE_BRANCH)
            return list(
                await db.scalars(
                    select(MessageRow)
                    .join(path, MessageRow.id == path.c.id)
                    .where(MessageRow.role == "user")
                    .order_by(path.c.depth.desc())
                )
            )

    @outage_is_unavailable
    async def activate(self, owner: str, session_id: uuid.UUID, message_id: uuid.UUID) -> uuid.UUID:
        """Make the branch through `message_id` the active one; its new leaf.

        The leaf is the most recent message at or under `message_id` (children
        are always written after their parent, so that one has no children):
        switching to a sibling shows it with the conversation that went on from it.
        """
        await self.message(owner, session_id, message_id)
        async with self._db.reader() as db:
            newest = await db.scalar(newest_under(session_id, message_id))
        assert newest is not None  # `message_id` itself, at least
        if not await self._db.write(_set_leaf, owner, session_id, newest):
            raise NotFound("No such message in this session.")
        return newest


def newest_under(session_id: uuid.UUID, message_id: uuid.UUID) -> Select[uuid.UUID]:
    messages = messages_table
    under = (
        select(messages.c.id, messages.c.pk)
        .where(messages.c.id == message_id, messages.c.session_id == session_id)
        .cte("under", recursive=True)
    )
    child = messages.alias("child")
    under = under.union_all(
        select(child.c.id, child.c.pk).where(
            child.c.parent_id == under.c.id, child.c.session_id == session_id
        )
    )
    return select(under.c.id).order_by(under.c.pk.desc()).limit(1)


def _set_leaf(
    connection: Connection, owner: str, session_id: uuid.UUID, message_id: uuid.UUID
) -> bool:
    sessions, messages = sessions_table, messages_table
    # The message must still be there (a turn deleted meanwhile would leave the
    # session pointing at nothing).
    result = connection.execute(
        update(sessions)
        .where(
            sessions.c.id == session_id,
            sessions.c.owner == owner,
            exists().where(messages.c.id == message_id, messages.c.session_id == session_id),
        )
        .values(active_leaf_id=message_id)
    )
    return bool(result.rowcount)


async def _siblings(
    db: Any, session_id: uuid.UUID, rows: list[MessageRow]
) -> dict[uuid.UUID | None, list[uuid.UUID]]:
    """The children of each parent of `rows` (None: the session's roots), oldest first."""
    parents = {row.parent_id for row in rows}
    if not parents:
        return {}
    linked = [parent for parent in parents if parent is not None]
    conditions = [MessageRow.parent_id.in_(linked)] if linked else []
    if None in parents:
        conditions.append(MessageRow.parent_id.is_(None))
    found = await db.execute(
        select(MessageRow.id, MessageRow.parent_id)
        .where(MessageRow.session_id == session_id, or_(*conditions))
        .order_by(MessageRow.pk)
    )
    children: dict[uuid.UUID | None, list[uuid.UUID]] = {parent: [] for parent in parents}
    for child in found:
        children[child.parent_id].append(child.id)
    return children


def _owned_session(owner: str, session_id: uuid.UUID) -> Select[SessionRow]:
    return select(SessionRow).where(SessionRow.id == session_id, SessionRow.owner == owner)
