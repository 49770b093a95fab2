"""Final writes of the runs that end together, in one transaction.

A run's final write is a few INSERTs and a commit, each a trip through the
database driver (on SQLite, through its one writer connection and thread,
every step also waiting for a turn of the event loop). When runs end faster
than that, they queue for the writer and every one of them waits for all
the trips of all the others. Here the runs that are waiting are written
together: one transaction, one INSERT of all their rows, one commit. One
run alone is written as before, at once.

No task of its own: the first caller writes (the leader); whoever comes
meanwhile queues; when the leader's batch is done, the next waiting caller
leads the next batch, so no caller writes for others longer than one batch.

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


class _Lead:
    """The result that tells a waiting caller to write the next batch."""


LEAD = _Lead()


@dataclass(slots=True)
class _Waiting(Generic[T]):
    item: T
    done: asyncio.Future[object] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupCommit(Generic[T]):
    def __init__(
        self,
        *,
        write_many: Callable[[list[T]], Awaitable[None]],
        write_one: Callable[[T], Awaitable[None]],
    ) -> None:
        self._write_many = write_many
        self._write_one = write_one
        self._queue: list[_Waiting[T]] = []
        self._writing = False

    async def write(self, item: T) -> None:
        """Commit `item` (alone or with others); raise what its own write raised."""
        waiting = _Waiting(item)
        self._queue.append(waiting)
        if self._writing:
            try:
                outcome = await waiting.done  # written (or failed) by a leader, or told to lead
            except BaseException:
                if _told_to_lead(waiting):  # and cancelled before it could: the next one leads
                    self._queue.remove(waiting)
                    self._pass_the_lead()
                raise
            if outcome is not LEAD:
                return
            waiting.done = asyncio.get_running_loop().create_future()
        self._writing = True
        batch = self._take_batch()
        try:
            await self._write(batch)
        except BaseException:
            # Cancelled mid-write (nothing was committed): the others of the
            # batch go back to the front of the queue, for the next leader.
            self._queue[:0] = [w for w in batch if w is not waiting and not w.done.done()]
            raise
        finally:
            self._pass_the_lead()
        waiting.done.result()  # raises this item's own failure, if it had one

    def _take_batch(self) -> list[_Waiting[T]]:
        # Callers that stopped waiting (cancelled) are not written for: they
        # keep their output elsewhere (the journal spools it).
        live = [w for w in self._queue if not w.done.done()]
        batch, rest = live[:MAX_BATCH], live[MAX_BATCH:]
        self._queue = rest
        return batch

    def _pass_the_lead(self) -> None:
        while self._queue:
            waiting = self._queue[0]
            if not waiting.done.done():
                waiting.done.set_result(LEAD)
                return
            self._queue.pop(0)
        self._writing = False

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


def _told_to_lead(waiting: _Waiting[T]) -> bool:
    done = waiting.done
    return (
        done.done() and not done.cancelled() and done.exception() is None and done.result() is LEAD
    )


def _settle(waiting: _Waiting[T], failure: BaseException | None) -> None:
    if waiting.done.done():
        return
    if failure is None:
        waiting.done.set_result(True)
    else:
        waiting.done.set_exception(failure)
