"""Final writes of the runs that end together, in one transaction.

A run's final write is a few INSERTs and a commit, each a trip through the
database driver (on SQLite, through its one writer connection and thread,
every step also waiting for a turn of the event loop). When runs end faster
than that, they queue for the writer and every one of them waits for all
the trips of all the others. Here the runs that are waiting are written
together: one transaction, one INSERT of all their rows, one commit. One
run alone is written as before, at once.

One writer task while there is anything to write: it takes every caller
waiting (up to MAX_BATCH) as one batch, writes it, and takes the next, and
ends when the queue is empty. A caller that stops waiting (its own timeout,
a cancellation) leaves the queue if its batch has not begun; a write that
has begun is never cancelled for it: cancelling a database call midway
makes SQLAlchemy throw its connection away, and on SQLite the abandoned
connection can keep the write lock, so that the next writers fail with
"database is locked" (seen at 1,000 streams, when the event loop was seconds
behind). Such a caller keeps its output elsewhere (the journal spools it);
written twice, the second write finds the rows there (their ids are
primary keys) and does nothing. Only a write that hangs past
`hang_timeout_s` is abandoned: its callers are answered (and spool), and
the writes behind it go (on PostgreSQL at once; on SQLite once the writer
thread, which finishes what it began, is free).

    commit = GroupCommit(write_many=store.write_run_outputs, write_one=store.write_run_output)
    await commit.write(output)      # returns once its rows are committed, or raises
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Outputs written in one transaction at most.
MAX_BATCH = 64
# A write still not done after this is abandoned (well past the callers' own timeouts).
HANG_TIMEOUT_S = 30.0


@dataclass(slots=True)
class _Waiting(Generic[T]):
    item: T
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupCommit(Generic[T]):
    def __init__(
        self,
        *,
        write_many: Callable[[list[T]], Awaitable[None]],
        write_one: Callable[[T], Awaitable[None]],
        hang_timeout_s: float = HANG_TIMEOUT_S,
    ) -> None:
        self._write_many = write_many
        self._write_one = write_one
        self._hang_timeout_s = hang_timeout_s
        self._queue: list[_Waiting[T]] = []
        self._writer: asyncio.Task[None] | None = None

    async def write(self, item: T) -> None:
        """Commit `item` (alone or with others); raise what its own write raised."""
        waiting = _Waiting(item)
        self._queue.append(waiting)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_all(), name="group-commit")
        # Cancelled, this cancels `done` (so its batch skips it), never the write.
        await waiting.done

    async def _write_all(self) -> None:
        batch: list[_Waiting[T]] = []
        try:
            while batch := self._take_batch():
                try:
                    async with asyncio.timeout(self._hang_timeout_s):
                        await self._write(batch)
                except TimeoutError as exc:
                    logger.error("a database write hung for %ss; abandoned", self._hang_timeout_s)
                    for waiting in batch:
                        _settle(waiting, exc)
        except BaseException as exc:  # the loop is closing: nobody is left waiting for ever
            for waiting in [*batch, *self._queue]:
                _settle(waiting, exc if isinstance(exc, Exception) else RuntimeError("stopped"))
            raise
        finally:
            self._writer = None

    def _take_batch(self) -> list[_Waiting[T]]:
        # Callers that stopped waiting are not written for: they keep their
        # output elsewhere (the journal spools it).
        live = [w for w in self._queue if not w.done.done()]
        batch, rest = live[:MAX_BATCH], live[MAX_BATCH:]
        self._queue = rest
        return batch

    async def _write(self, batch: list[_Waiting[T]]) -> None:
        try:
            if len(batch) == 1:
                await self._write_one(batch[0].item)
            else:
                await self._write_many([w.item for w in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], exc)
                return
            # Something in the batch was refused (a row already written, a
            # session deleted meanwhile, a strange value): each is written on
            # its own, so that one output's problem stays its own.
            logger.debug("a group commit of %d outputs failed (%r); one by one", len(batch), exc)
            for waiting in batch:
                try:
                    await self._write_one(waiting.item)
                except Exception as own:
                    _settle(waiting, own)
                else:
                    _settle(waiting, None)
            return
        for waiting in batch:
            _settle(waiting, None)


def _settle(waiting: _Waiting[T], failure: BaseException | None) -> None:
    if waiting.done.done():
        return
    if failure is None:
        waiting.done.set_result(None)
    else:
        waiting.done.set_exception(failure)
