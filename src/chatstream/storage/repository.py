"""Every read and write chatstream makes, each scoped to the caller's owner id.

There is no way here to fetch a session, message or run by id alone: every
method takes `owner` and puts it in the SQL, so another owner's id behaves
exactly like a missing one. Each method opens its own short transaction; no
database session outlives a call, let alone a stream.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Select, and_, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from chatstream.errors import Conflict, NotFound
from chatstream.storage import writes
from chatstream.storage.cursors import decode_cursor, encode_cursor
from chatstream.storage.db import Database
from chatstream.storage.models import MessageRow, SessionRow, utcnow
from chatstream.storage.outages import outage_is_unavailable
from chatstream.storage.records import (
    HistoryMessage,
    OrphanedReply,
    OutputRow,
    Page,
    Parent,
    RunOutput,
)
from chatstream.storage.writes import TurnStart

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class SessionGone(Exception):
    """The run's session was deleted while it ran; there is nowhere to write."""


class DuplicateRequest(Exception):
    """Another request with the same `client_message_id` got there first."""


@dataclass(frozen=True, slots=True)
class EarlierRequest:
    """What a `client_message_id` already started."""

    session_id: uuid.UUID
    user_message_id: uuid.UUID
    reply_id: uuid.UUID
    message: str = ""  # what the user sent with that key


class Store:
    """The database, as chatstream uses it. Outages surface as `DatabaseUnavailable`,
    except in `write_run_output`, whose caller keeps the rows in the spool."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # --- sessions ------------------------------------------------------------

    @outage_is_unavailable
    async def create_session(
        self, owner: str, *, title: str | None, model: str | None, system_prompt: str | None
    ) -> SessionRow:
        now = utcnow()
        row = SessionRow(
            id=uuid.uuid4(),
            owner=owner,
            title=title,
            model=model,
            system_prompt=system_prompt,
            created_at=now,
            updated_at=now,
        )
        await self._db.write(writes.add_session, row)
        return row

    @outage_is_unavailable
    async def get_session(self, owner: str, session_id: uuid.UUID) -> tuple[SessionRow, int]:
        """The session and its message count."""
        async with self._db.reader() as db:
            row = await db.scalar(_owned_session(owner, session_id))
            if row is None:
                raise NotFound("No such session.")
            count = await db.scalar(
                select(func.count()).select_from(MessageRow).where(MessageRow.session_id == row.id)
            )
        return row, int(count or 0)

    @outage_is_unavailable
    async def list_sessions(
        self, owner: str, *, limit: int, cursor: str | None
    ) -> Page[SessionRow]:
        """Most recently active first (`updated_at`: a new message, or a change)."""
        query = select(SessionRow).where(SessionRow.owner == owner)
        if cursor is not None:
            active, pk = decode_cursor(cursor)
            query = query.where(
                or_(
                    SessionRow.updated_at < active,
                    and_(SessionRow.updated_at == active, SessionRow.pk < pk),
                )
            )
        query = query.order_by(SessionRow.updated_at.desc(), SessionRow.pk.desc()).limit(limit + 1)
        async with self._db.reader() as db:
            rows = list(await db.scalars(query))
        more = len(rows) > limit
        rows = rows[:limit]
        last = rows[-1] if rows else None
        return Page(rows, encode_cursor(last.updated_at, last.pk) if more and last else None)

    @outage_is_unavailable
    async def update_session(
        self, owner: str, session_id: uuid.UUID, changes: dict[str, Any]
    ) -> SessionRow:
        return await self._db.write(writes.update_session, owner, session_id, changes, utcnow())

    @outage_is_unavailable
    async def untitled_first_message(self, owner: str, session_id: uuid.UUID) -> str | None:
        """The session's first user message, if the session has no title yet; else None."""
        async with self._db.reader() as db:
            untitled = await db.scalar(
                select(SessionRow.id).where(
                    SessionRow.id == session_id,
                    SessionRow.owner == owner,
                    SessionRow.title.is_(None),
                )
            )
            if untitled is None:
                return None
            return await db.scalar(
                select(MessageRow.content)
                .where(MessageRow.session_id == session_id, MessageRow.role == "user")
                .order_by(MessageRow.pk)
                .limit(1)
            )

    @outage_is_unavailable
    async def set_title_if_untitled(self, owner: str, session_id: uuid.UUID, title: str) -> bool:
        """Title a session that has none; a title set meanwhile (PATCH) is kept. True if set."""
        return await self._db.write(writes.set_title_if_untitled, owner, session_id, title)

    @outage_is_unavailable
    async def delete_session(self, owner: str, session_id: uuid.UUID) -> None:
        await self._db.write(writes.delete_session, owner, session_id)

    # --- messages --------------------------------------------------------------

    @outage_is_unavailable
    async def list_messages(
        self, owner: str, session_id: uuid.UUID, *, limit: int, before: uuid.UUID | None
    ) -> Page[MessageRow]:
        """Every message of the session, of every branch, in the order written."""
        async with self._db.reader() as db:
            session = await db.scalar(_owned_session(owner, session_id))
            if session is None:
                raise NotFound("No such session.")
            query = select(MessageRow).where(MessageRow.session_id == session.id)
            if before is not None:
                anchor = await db.scalar(
                    select(MessageRow.pk).where(
                        MessageRow.id == before, MessageRow.session_id == session.id
                    )
                )
                if anchor is None:
                    raise NotFound("`before` is not a message of this session.")
                query = query.where(MessageRow.pk < anchor)
            rows = list(await db.scalars(query.order_by(MessageRow.pk.desc()).limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        rows.reverse()
        return Page(rows, str(rows[0].id) if more else None)

    @outage_is_unavailable
    async def get_message(self, owner: str, message_id: uuid.UUID) -> MessageRow | None:
        async with self._db.reader() as db:
            return await db.scalar(
                select(MessageRow).where(MessageRow.id == message_id, MessageRow.owner == owner)
            )

    # --- runs ------------------------------------------------------------------

    @outage_is_unavailable
    async def begin_turn(
        self,
        owner: str,
        *,
        session_id: uuid.UUID | None,
        new_session_model: str | None,
        new_session_system_prompt: str | None,
        message: str,
        history_limit: int,
        reply_id: uuid.UUID,
        runner: str | None = None,
        client_message_id: str | None = None,
        new_session_external_id: str | None = None,
        earlier: Sequence[HistoryMessage] = (),
        reanswer: uuid.UUID | None = None,
        title_from_message: bool = True,
        turn: HistoryMessage | None = None,
        parent: Parent | None = None,
        request_options: dict[str, Any] | None = None,
    ) -> TurnStart:
        """Commit the user's message (creating the session if needed); read the history.

        With a `client_message_id` this owner already used, nothing is written
        and `DuplicateRequest` is raised: the unique index decides, so of two
        concurrent repeats exactly one wins.

        For protocol adapters: a new session gets `new_session_external_id`
        (the client's chat id) and starts with the `earlier` messages (user
        and assistant text, oldest first) before this one; with `reanswer`
        (a user message of `session_id`) nothing is inserted and the turn is
        that message's, with its branch up to it. With `turn` (a tool result)
        the new message is that record, not the user's `message`, and `earlier`
        (the round's other results) go before it in an existing session too.
        New messages follow the session's active leaf, or `parent` (an edit).
        """
        if reanswer is not None:
            if session_id is None:
                raise NotFound("No such session.")
            return await self._db.write(
                writes.reopen_turn,
                owner,
                session_id,
                reanswer,
                reply_id,
                history_limit,
                utcnow(),
            )
        try:
            return await self._db.write(
                writes.begin_turn,
                owner,
                now=utcnow(),
                session_id=session_id,
                new_session_model=new_session_model,
                new_session_system_prompt=new_session_system_prompt,
                message=message,
                history_limit=history_limit,
                reply_id=reply_id,
                runner=runner,
                client_message_id=client_message_id,
                new_session_external_id=new_session_external_id,
                earlier=earlier,
                title_from_message=title_from_message,
                turn=turn,
                parent=parent,
                request_options=request_options,
            )
        except IntegrityError:
            if session_id is None and new_session_external_id is not None:
                # A concurrent first message of the same chat created its session.
                raise Conflict(
                    "This chat is being started by another request; send again."
                ) from None
            if client_message_id is None:
                raise
            raise DuplicateRequest() from None

    # --- for protocol adapters -----------------------------------------------------

    @outage_is_unavailable
    async def session_of_chat(self, owner: str, external_id: str) -> uuid.UUID | None:
        """The owner's session named by a client's chat id, if there is one."""
        async with self._db.reader() as db:
            return await db.scalar(
                select(SessionRow.id).where(
                    SessionRow.owner == owner, SessionRow.external_id == external_id
                )
            )

    @outage_is_unavailable
    async def run_rows(self, owner: str, run_id: uuid.UUID) -> list[OutputRow]:
        """Every row an ended run wrote, in order (just the answer, for runs before 0004)."""
        async with self._db.reader() as db:
            rows = list(
                await db.scalars(
                    select(MessageRow)
                    .where(MessageRow.run_id == run_id, MessageRow.owner == owner)
                    .order_by(MessageRow.pk)
                )
            )
            if not rows:
                answer = await db.scalar(
                    select(MessageRow).where(MessageRow.id == run_id, MessageRow.owner == owner)
                )
                rows = [answer] if answer is not None else []
        return [_output_row(row) for row in rows]

    @outage_is_unavailable
    async def find_request(self, owner: str, client_message_id: str) -> EarlierRequest | None:
        async with self._db.reader() as db:
            row = (
                await db.execute(
                    select(
                        MessageRow.session_id,
                        MessageRow.id,
                        MessageRow.reply_id,
                        MessageRow.content,
                    ).where(
                        MessageRow.owner == owner, MessageRow.client_message_id == client_message_id
                    )
                )
            ).first()
        if row is None or row.reply_id is None:
            return None
        return EarlierRequest(
            session_id=row.session_id,
            user_message_id=row.id,
            reply_id=row.reply_id,
            message=row.content,
        )

    async def orphaned_replies(self, runner: str, *, before: float) -> list[OrphanedReply]:
        """User messages `runner` started answering before `before` whose answer never landed."""
        answers = aliased(MessageRow)
        query = select(
            MessageRow.owner, MessageRow.session_id, MessageRow.reply_id, MessageRow.id
        ).where(
            MessageRow.role.in_(("user", "tool")),  # a tool result can start a run
            MessageRow.runner == runner,
            MessageRow.reply_id.is_not(None),
            MessageRow.created_at < datetime.fromtimestamp(before, UTC),
            ~exists().where(answers.id == MessageRow.reply_id),
        )
        async with self._db.reader() as db:
            rows = (await db.execute(query)).all()
        return [OrphanedReply(row.owner, row.session_id, row.reply_id, row.id) for row in rows]

    async def write_run_outputs(self, outputs: Sequence[RunOutput]) -> None:
        """Several runs' rows in one transaction and one INSERT (`durability/group_commit.py`).

        Any failure fails them all; the caller then writes each on its own.
        """
        await self._db.write(writes.insert_outputs, outputs, utcnow())

    async def write_run_output(self, output: RunOutput) -> None:
        """All of a run's rows in one transaction: INSERTs only, never an UPDATE."""
        try:
            await self._db.write(writes.insert_outputs, [output], utcnow())
        except IntegrityError:
            # Rows already written (a retry after an uncertain commit), or the
            # session was deleted while the run ran (the foreign key says so);
            # anything else is a problem with the rows themselves.
            if await self._all_written(output.owner, [row.id for row in output.rows]):
                return
            if not await self._session_exists(output.owner, output.session_id):
                raise SessionGone() from None
            raise

    async def _session_exists(self, owner: str, session_id: uuid.UUID) -> bool:
        async with self._db.reader() as db:
            return await db.scalar(select(exists().where(*_owned(owner, session_id)))) or False

    async def _all_written(self, owner: str, ids: Sequence[uuid.UUID]) -> bool:
        async with self._db.reader() as db:
            found = await db.scalar(
                select(func.count())
                .select_from(MessageRow)
                .where(MessageRow.id.in_(ids), MessageRow.owner == owner)
            )
        return int(found or 0) == len(ids)


def _output_row(row: MessageRow) -> OutputRow:
    return OutputRow(
        id=row.id,
        role=row.role,
        content=row.content,
        status=row.status,
        model=row.model,
        finish_reason=row.finish_reason,
        tool_calls=row.tool_calls,
        tool_call_id=row.tool_call_id,
        name=row.name,
        usage=row.usage,
        metrics=row.metrics,
        reasoning=row.reasoning,
    )


def _owned(owner: str, session_id: uuid.UUID) -> tuple[Any, Any]:
    return SessionRow.id == session_id, SessionRow.owner == owner


def _owned_session(owner: str, session_id: uuid.UUID) -> Select[SessionRow]:
    return select(SessionRow).where(*_owned(owner, session_id))
