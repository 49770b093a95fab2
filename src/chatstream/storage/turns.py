"""One turn of a conversation, addressed by its answer: what was sent, what was answered.

The Responses API names a turn by its answer (`resp_<message_id>`) and asks
for its input (`GET /v1/responses/{id}/input_items`) and to delete it. A
turn's rows are the run's own (its tool rounds and answer: `run_id`), and
before them its input: the user's message, or the client's tool results, and
for a conversation's first turn the earlier messages it was sent with;
everything back to the previous run's rows. Where messages link to their
parent (`parent_id`), that chain is walked, so a turn on one branch never
takes rows of another; rows without the link are read in the order written.

Deleting a turn removes its input and its run's rows; what followed it then
follows what preceded it (children are relinked to the turn's parent, and a
session whose active leaf was in the turn gets the parent as its leaf). An
input that another branch goes on from (a question answered again: its other
answers are its children too) is kept: only the run's rows go.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, select, update

from chatstream.errors import NotFound
from chatstream.storage.branches import newest_under
from chatstream.storage.db import Database
from chatstream.storage.models import MessageRow, messages_table, sessions_table
from chatstream.storage.outages import outage_is_unavailable


@dataclass(frozen=True, slots=True)
class Turn:
    session_id: uuid.UUID
    inputs: list[MessageRow]  # oldest first
    outputs: list[MessageRow]  # the run's rows, the answer last
    # Some input is followed by messages of another branch (another answer to it).
    inputs_shared: bool = False


class Turns:
    def __init__(self, db: Database) -> None:
        self._db = db

    @outage_is_unavailable
    async def get(self, owner: str, answer_id: uuid.UUID) -> Turn | None:
        async with self._db.reader() as db:
            answer = await db.scalar(
                select(MessageRow).where(
                    MessageRow.id == answer_id,
                    MessageRow.owner == owner,
                    MessageRow.role == "assistant",
                )
            )
            if answer is None:
                return None
            rows = list(
                await db.scalars(
                    select(MessageRow)
                    .where(MessageRow.session_id == answer.session_id)
                    .order_by(MessageRow.pk)
                )
            )
        return _turn_of(answer, rows)

    @outage_is_unavailable
    async def question_of(self, owner: str, answer_id: uuid.UUID) -> MessageRow | None:
        """The message a live run answers (its answer is not written yet)."""
        async with self._db.reader() as db:
            found: MessageRow | None = await db.scalar(
                select(MessageRow).where(
                    MessageRow.reply_id == answer_id, MessageRow.owner == owner
                )
            )
        return found

    @outage_is_unavailable
    async def delete(self, owner: str, answer_id: uuid.UUID) -> None:
        turn = await self.get(owner, answer_id)
        if turn is None:
            raise NotFound("No such response.")
        await self._db.write(_delete_turn, turn)


def _turn_of(answer: MessageRow, rows: list[MessageRow]) -> Turn:
    outputs = [row for row in rows if row.run_id == answer.id or row.id == answer.id]
    first = outputs[0]
    by_id = {row.id: row for row in rows}
    inputs: list[MessageRow] = []
    if first.parent_id is not None:
        parent = by_id.get(first.parent_id)
        while parent is not None and parent.run_id is None:
            inputs.append(parent)
            parent = by_id.get(parent.parent_id) if parent.parent_id is not None else None
    else:
        before = rows[: rows.index(first)]
        for row in reversed(before):
            if row.run_id is not None:
                break  # the previous run's rows
            inputs.append(row)
    inputs.reverse()
    ours = {row.id for row in (*inputs, *outputs)}
    inputs_ids = {row.id for row in inputs}
    shared = any(row.parent_id in inputs_ids and row.id not in ours for row in rows)
    return Turn(answer.session_id, inputs, outputs, shared)


def _delete_turn(connection: Connection, turn: Turn) -> None:
    messages, sessions = messages_table, sessions_table
    rows = turn.outputs if turn.inputs_shared else [*turn.inputs, *turn.outputs]
    ids = [row.id for row in rows]
    parent = rows[0].parent_id
    connection.execute(
        update(messages)
        .where(messages.c.parent_id.in_(ids), messages.c.id.not_in(ids))
        .values(parent_id=parent)
    )
    connection.execute(delete(messages).where(messages.c.id.in_(ids)))
    # The branch now ends where the turn began; when its question stays (answered
    # again elsewhere), with the answer that remains, the latest.
    leaf: Any = parent
    if turn.inputs_shared and parent is not None:
        leaf = newest_under(turn.session_id, parent).scalar_subquery()
    connection.execute(
        update(sessions)
        .where(sessions.c.id == turn.session_id, sessions.c.active_leaf_id.in_(ids))
        .values(active_leaf_id=leaf)
    )
