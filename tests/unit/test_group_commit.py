"""Runs that end together are written together; one's problem or cancellation stays its own."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from chatstream.durability.group_commit import MAX_BATCH, GroupCommit


class Database:
    """Records each transaction; `slow` holds a write until released; `bad` items are refused."""

    def __init__(self, bad: frozenset[int] = frozenset()) -> None:
        self.transactions: list[list[int]] = []
        self.committed: list[int] = []
        self.bad = bad
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()
        self.held: dict[int, asyncio.Event] = {}  # transaction number: released when set

    async def write_many(self, items: list[int]) -> None:
        await self._transaction(items)

    async def write_one(self, item: int) -> None:
        await self._transaction([item])

    async def _transaction(self, items: list[int]) -> None:
        self.transactions.append(items)
        self.entered.set()
        await self.gate.wait()
        held = self.held.get(len(self.transactions) - 1)
        if held is not None:
            await held.wait()
        if self.bad & set(items):
            raise ValueError(f"refused {sorted(self.bad & set(items))}")
        self.committed.extend(items)


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0)


def commit_for(database: Database) -> GroupCommit[int]:
    return GroupCommit(write_many=database.write_many, write_one=database.write_one)


async def held_first_write(database: Database, commit: GroupCommit[int]) -> asyncio.Task[None]:
    """Item 0 is being written (and held), so that what comes next has to wait."""
    database.gate.clear()
    first = asyncio.create_task(commit.write(0))
    await asyncio.wait_for(database.entered.wait(), 5)
    return first


def test_a_lone_write_is_written_at_once() -> None:
    async def scenario() -> Database:
        database = Database()
        await commit_for(database).write(7)
        return database

    database = asyncio.run(scenario())
    assert database.transactions == [[7]]


def test_writes_that_wait_together_are_one_transaction() -> None:
    async def scenario() -> Database:
        database = Database()
        commit = commit_for(database)
        first = await held_first_write(database, commit)
        others = [asyncio.create_task(commit.write(i)) for i in range(1, 11)]
        await asyncio.sleep(0)
        database.gate.set()
        await asyncio.wait_for(asyncio.gather(first, *others), 5)
        return database

    database = asyncio.run(scenario())
    assert database.transactions == [[0], list(range(1, 11))]
    assert sorted(database.committed) == list(range(11))


def test_a_batch_is_at_most_max_batch_long() -> None:
    async def scenario() -> Database:
        database = Database()
        commit = commit_for(database)
        first = await held_first_write(database, commit)
        others = [asyncio.create_task(commit.write(i)) for i in range(1, MAX_BATCH + 6)]
        await asyncio.sleep(0)
        database.gate.set()
        await asyncio.wait_for(asyncio.gather(first, *others), 5)
        return database

    database = asyncio.run(scenario())
    assert [len(t) for t in database.transactions] == [1, MAX_BATCH, 5]


def test_one_refused_output_fails_alone() -> None:
    async def scenario() -> tuple[Database, list[BaseException | None]]:
        database = Database(bad=frozenset({4}))
        commit = commit_for(database)
        first = await held_first_write(database, commit)
        others = [asyncio.create_task(commit.write(i)) for i in range(1, 8)]
        await asyncio.sleep(0)
        database.gate.set()
        results = await asyncio.wait_for(asyncio.gather(first, *others, return_exceptions=True), 5)
        return database, list(results)

    database, results = asyncio.run(scenario())
    assert [type(r).__name__ if r else None for r in results] == [
        None, None, None, None, "ValueError", None, None, None
    ]  # fmt: skip
    assert sorted(database.committed) == [0, 1, 2, 3, 5, 6, 7]


def test_a_caller_that_stops_waiting_mid_write_does_not_stop_the_write() -> None:
    """Cancelling a database call midway would cost its connection (and, on SQLite, the lock)."""

    async def scenario() -> tuple[Database, bool]:
        database = Database()
        commit = commit_for(database)
        database.held[1] = second_transaction = asyncio.Event()
        first = await held_first_write(database, commit)
        batch = [asyncio.create_task(commit.write(i)) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        database.gate.set()
        await asyncio.wait_for(first, 5)
        await asyncio.wait_for(until(lambda: len(database.transactions) == 2), 5)
        assert database.transactions[1] == [1, 2, 3]
        batch[0].cancel()  # 1's caller stops waiting while its batch is being written
        await asyncio.sleep(0)
        second_transaction.set()
        await asyncio.wait_for(asyncio.gather(*batch[1:]), 5)
        return database, batch[0].cancelled()

    database, cancelled = asyncio.run(scenario())
    assert cancelled
    assert database.transactions == [[0], [1, 2, 3]]  # written once, whole
    assert sorted(database.committed) == [0, 1, 2, 3]


def test_a_caller_that_stops_waiting_before_its_batch_is_not_written() -> None:
    async def scenario() -> tuple[Database, bool]:
        database = Database()
        commit = commit_for(database)
        first = await held_first_write(database, commit)
        second = asyncio.create_task(commit.write(1))
        third = asyncio.create_task(commit.write(2))
        await asyncio.sleep(0)
        second.cancel()
        await asyncio.sleep(0)
        database.gate.set()
        await asyncio.wait_for(asyncio.gather(first, third), 5)
        return database, second.cancelled()

    database, cancelled = asyncio.run(scenario())
    assert cancelled
    assert database.transactions == [[0], [2]]


def test_a_write_that_hangs_is_abandoned_and_the_next_ones_go() -> None:
    async def scenario() -> tuple[Database, BaseException | None]:
        database = Database()
        commit = GroupCommit(
            write_many=database.write_many, write_one=database.write_one, hang_timeout_s=0.2
        )
        database.held[0] = asyncio.Event()  # never set: transaction 0 hangs
        hung = asyncio.create_task(commit.write(0))
        await asyncio.wait_for(database.entered.wait(), 5)
        later = asyncio.create_task(commit.write(1))
        failure = (await asyncio.wait_for(asyncio.gather(hung, return_exceptions=True), 5))[0]
        await asyncio.wait_for(later, 5)
        return database, failure

    database, failure = asyncio.run(scenario())
    assert isinstance(failure, TimeoutError)
    assert database.committed == [1]
