"""The tree's storage paths no client reaches directly, on SQLite and PostgreSQL: outputs
kept before messages had parents, and a session whose leaf was never set."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import update

from chatstream.storage.branches import Branches
from chatstream.storage.db import Database
from chatstream.storage.models import sessions_table
from chatstream.storage.records import OutputRow, RunOutput
from chatstream.storage.repository import Store


async def turn(
    store: Store, session_id: uuid.UUID | None, text: str
) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """A question answered: its session, its id and its answer's."""
    run_id = uuid.uuid4()
    started = await store.begin_turn(
        "alice",
        session_id=session_id,
        new_session_model=None,
        new_session_system_prompt=None,
        message=text,
        history_limit=10,
        reply_id=run_id,
    )
    return started.session_id, started.user_message_id, run_id


async def unlinked_outputs_and_unset_leaves(url: str) -> None:
    database = Database(url)
    store, branches = Store(database), Branches(database)
    try:
        # Outputs with no parent (a spool file from before 0008), written together and alone.
        first = await turn(store, None, "q1")
        second = await turn(store, None, "q2")
        outputs = [
            RunOutput("alice", session, [OutputRow(run, "assistant", f"a{n}", "complete")])
            for n, (session, _, run) in enumerate((first, second))
        ]
        await store.write_run_outputs(outputs)
        third = await turn(store, first[0], "q3")
        tool = OutputRow(uuid.uuid4(), "tool", "r", "complete", tool_call_id="c", name="f")
        await store.write_run_output(
            RunOutput("alice", third[0], [tool, OutputRow(third[2], "assistant", "a3", "complete")])
        )
        page = await branches.page("alice", first[0], limit=50, before=None)
        rows = [item.row for item in page.items]
        assert [row.content for row in rows] == ["q1", "a0", "q3", "r", "a3"]
        assert [row.parent_id for row in rows] == [None, *(row.id for row in rows[:-1])]
        other = await branches.page("alice", second[0], limit=50, before=None)
        assert [item.row.content for item in other.items] == ["q2", "a1"]

        # A session whose leaf was never set ends at its last message.
        await database.write(
            lambda connection: connection.execute(
                update(sessions_table)
                .where(sessions_table.c.id == first[0])
                .values(active_leaf_id=None)
            )
        )
        again = await branches.page("alice", first[0], limit=2, before=None)
        assert [item.row.content for item in again.items] == ["r", "a3"]
        assert again.next_cursor == str(again.items[0].row.id)
        older = await branches.page("alice", first[0], limit=50, before=again.items[0].row.id)
        assert [item.row.content for item in older.items] == ["q1", "a0", "q3"]
        question = await branches.question_of("alice", first[0], None)
        assert question is not None and question.content == "q3"
    finally:
        await database.aclose()


def test_on_sqlite(database_url: str) -> None:
    asyncio.run(unlinked_outputs_and_unset_leaves(database_url))


@pytest.mark.postgres
def test_on_postgres(postgres_url: str) -> None:
    asyncio.run(unlinked_outputs_and_unset_leaves(postgres_url))
