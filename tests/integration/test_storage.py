"""The repository against real databases: the idempotency race decided by the unique index;
final writes of runs that end together."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import pytest

from chatstream.durability.group_commit import GroupCommit
from chatstream.storage.db import Database
from chatstream.storage.records import OutputRow, RunOutput
from chatstream.storage.repository import DuplicateRequest, Store


async def race(url: str) -> list[object]:
    database = Database(url)
    store = Store(database)
    # An owner of its own: the PostgreSQL database is shared by the session's tests.
    owner = f"alice-{uuid.uuid4().hex[:8]}"
    try:

        async def attempt() -> object:
            try:
                return await store.begin_turn(
                    owner,
                    session_id=None,
                    new_session_model=None,
                    new_session_system_prompt=None,
                    message="same request",
                    history_limit=10,
                    reply_id=uuid.uuid4(),
                    client_message_id="race-key",
                )
            except DuplicateRequest as exc:
                return exc

        results = await asyncio.gather(*(attempt() for _ in range(5)))
        earlier = await store.find_request(owner, "race-key")
        assert earlier is not None
        winners = [r for r in results if not isinstance(r, DuplicateRequest)]
        assert len(winners) == 1
        assert winners[0].user_message_id == earlier.user_message_id  # type: ignore[attr-defined]
        sessions = await store.list_sessions(owner, limit=50, cursor=None)
        assert len(sessions.items) == 1  # the losers' new sessions were rolled back
        return results
    finally:
        await database.aclose()


def test_concurrent_repeats_on_sqlite(database_url: str) -> None:
    results = asyncio.run(race(database_url))
    assert sum(isinstance(r, DuplicateRequest) for r in results) == 4


@pytest.mark.postgres
def test_concurrent_repeats_on_postgres(postgres_url: str) -> None:
    results = asyncio.run(race(postgres_url))
    assert sum(isinstance(r, DuplicateRequest) for r in results) == 4


async def end_together(url: str) -> tuple[list[object], list[int]]:
    """20 runs' final writes at once, one of them into a session deleted meanwhile."""
    database = Database(url)
    store = Store(database)
    batches: list[int] = []

    async def write_many(outputs: Sequence[RunOutput]) -> None:
        batches.append(len(outputs))
        await store.write_run_outputs(outputs)

    commit = GroupCommit[RunOutput](write_many=write_many, write_one=store.write_run_output)
    try:
        outputs = []
        for index in range(20):
            run_id = uuid.uuid4()
            turn = await store.begin_turn(
                "alice",
                session_id=None,
                new_session_model=None,
                new_session_system_prompt=None,
                message=f"question {index}",
                history_limit=10,
                reply_id=run_id,
            )
            call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            rows = [
                OutputRow(uuid.uuid4(), "assistant", "", "complete", tool_calls=[call]),
                OutputRow(uuid.uuid4(), "tool", "result", "complete", tool_call_id="c1", name="f"),
                OutputRow(run_id, "assistant", f"answer {index}", "complete", usage={"n": index}),
            ]
            outputs.append(RunOutput("alice", turn.session_id, rows))
        await store.delete_session("alice", outputs[7].session_id)
        results = await asyncio.gather(
            *(commit.write(output) for output in outputs), return_exceptions=True
        )
        for index, output in enumerate(outputs):
            stored = await store.run_rows("alice", output.rows[-1].id)
            if index == 7:
                assert stored == []
            else:
                assert [(r.role, r.content) for r in stored] == [
                    ("assistant", ""),
                    ("tool", "result"),
                    ("assistant", f"answer {index}"),
                ]
                assert stored[0].tool_calls and stored[-1].usage == {"n": index}
        return list(results), batches
    finally:
        await database.aclose()


def check_ended_together(results: list[object], batches: list[int]) -> None:
    assert [type(r).__name__ for r in results if r is not None] == ["SessionGone"]
    assert results.index(next(r for r in results if r is not None)) == 7
    assert max(batches) > 1  # written together, then (one refused) one by one


def test_runs_that_end_together_are_written_together_on_sqlite(database_url: str) -> None:
    check_ended_together(*asyncio.run(end_together(database_url)))


@pytest.mark.postgres
def test_runs_that_end_together_are_written_together_on_postgres(postgres_url: str) -> None:
    check_ended_together(*asyncio.run(end_together(postgres_url)))
