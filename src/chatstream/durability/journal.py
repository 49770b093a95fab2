"""Runs' rows on their way to the database, whatever happens to it or to us.

    save(output)      a run's final write: the database, or else the spool
                      (fsynced) and `persisted: false`; retried until it lands
    checkpoints       every CHATSTREAM_CHECKPOINT_INTERVAL_S, each live run's
                      rows so far go to the spool
    recover()         at start-up: spooled outputs are written; runs this
                      instance was generating when it died are finished as
                      `interrupted`, with the text their checkpoint holds;
                      shared runs (CHATSTREAM_REDIS_URL) are left to the
                      instance that takes them over, from Redis' copy, which
                      is their record (fleet/redis_takeover.py)

Every write is idempotent on message ids, so a row lands exactly once however
often it is retried (the database may have taken a write whose answer was
lost; a crash may come between a write and the removal of its checkpoint).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Protocol

import anyio
import anyio.abc
import anyio.to_thread
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from chatstream.durability.group_commit import GroupCommit
from chatstream.durability.spool import Spool, encode
from chatstream.logs import log_fault
from chatstream.storage.records import OutputRow, RunOutput
from chatstream.storage.repository import SessionGone, Store

logger = logging.getLogger(__name__)

DATABASE_WRITE_TIMEOUT_S = 5.0
# A spooled output the database refused this many times for a reason in its
# rows (not an outage) is set aside in spool/broken/.
MAX_DATA_FAILURES = 3
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0


class Checkpointed(Protocol):
    """A live run, as the journal sees it: how far it got, and its rows so far."""

    @property
    def id(self) -> uuid.UUID: ...

    def progress(self) -> tuple[int, int]: ...

    def snapshot(self) -> RunOutput: ...


# Where each shared run stands in Redis: its status there, or None (not shared, or gone).
SharedStatus = Callable[[Sequence[uuid.UUID]], Awaitable[dict[uuid.UUID, str | None]]]
_HELD_ELSEWHERE = ("live", "ending")  # still some instance's to end


class RunJournal:
    def __init__(
        self,
        store: Store,
        spool: Spool,
        *,
        checkpoint_interval_s: float,
        live_runs: Callable[[], Iterable[Checkpointed]],
        known: Callable[[uuid.UUID], bool],
        shared_status: SharedStatus | None = None,
    ) -> None:
        self._store = store
        # Runs that end together are written together (one transaction).
        self._commit = GroupCommit[RunOutput](
            write_many=store.write_run_outputs, write_one=store.write_run_output
        )
        self._spool = spool
        self._interval = checkpoint_interval_s
        self._live_runs = live_runs
        self._known = known
        self._shared_status = shared_status
        self._checkpointed: dict[uuid.UUID, tuple[int, int]] = {}
        self._encoded: dict[uuid.UUID, bytes] = {}  # each live run's last checkpoint
        self._failures: dict[uuid.UUID, int] = {}
        self._spooled = anyio.Event()
        self._recovered = False
        self._started_at = time.time()
        self._tasks: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> RunJournal:
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        self._tasks.start_soon(self._checkpoint_loop)
        self._tasks.start_soon(self._retry_loop)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._tasks is not None
        self._tasks.cancel_scope.cancel()
        await self._tasks.__aexit__(exc_type, exc, tb)

    # --- the runs' store ------------------------------------------------------------------

    async def save(self, output: RunOutput) -> bool:
        """Write the run's rows; True if the database has them, False if the spool does."""
        try:
            with anyio.fail_after(DATABASE_WRITE_TIMEOUT_S):
                await self._commit.write(output)
            return True
        except SessionGone:
            logger.info(
                "run %s: its session was deleted meanwhile; nothing to write", output.rows[-1].id
            )
            return False
        except Exception as exc:
            logger.warning(
                "run %s: database refused the final write (%s); spooling it",
                output.rows[-1].id,
                type(exc).__name__,
            )
        await anyio.to_thread.run_sync(self._spool.keep, output)
        self._spooled.set()
        return False

    async def spooled_count(self) -> int:
        return await anyio.to_thread.run_sync(self._spool.pending_count)

    # --- in the background -------------------------------------------------------------

    async def _checkpoint_loop(self) -> None:
        while True:
            await anyio.sleep(self._interval)
            try:
                await self.checkpoint()
            except Exception as exc:  # a full disk must not stop the server
                logger.warning("checkpointing failed (%s)", type(exc).__name__)

    async def checkpoint(self) -> None:
        """Spool the rows of every live run that has produced something: one file, one write.

        A run whose progress has not changed since the last time keeps the
        encoding it had; only the changed ones are snapshot and encoded again.
        """
        changed = False
        live_ids = set()
        for run in self._live_runs():
            live_ids.add(run.id)
            progress = run.progress()
            if progress != (0, 0) and self._checkpointed.get(run.id) != progress:
                self._encoded[run.id] = encode(run.snapshot())
                self._checkpointed[run.id] = progress
                changed = True
        for run_id in [run_id for run_id in self._checkpointed if run_id not in live_ids]:
            del self._checkpointed[run_id]
            del self._encoded[run_id]
            changed = True
        if changed:
            await anyio.to_thread.run_sync(
                self._spool.write_checkpoints, list(self._encoded.values())
            )

    async def _retry_loop(self) -> None:
        """Write what the spool holds, with backoff, until the database takes it all."""
        delay = RETRY_FIRST_S
        while True:
            done = await self._retry_once()
            if done:
                delay = RETRY_FIRST_S
                self._spooled = anyio.Event()
                with anyio.move_on_after(RETRY_MAX_S):
                    await self._spooled.wait()
            else:
                await anyio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def _retry_once(self) -> bool:
        """One pass: spooled outputs, then (until it has succeeded once) recovery.

        True when nothing is left to do. Each output is tried on its own: one
        the database refuses for a reason in its rows is retried a few times,
        then set aside in `broken/`, and never holds up the others; an outage
        ends the pass.

        In that order: a run whose final write was spooled and whose process
        then died has both its complete rows here and a partial checkpoint;
        the complete rows must land first (writes are idempotent, so the
        checkpoint then finds them written and changes nothing).
        """
        try:
            left = 0
            for output in await anyio.to_thread.run_sync(self._spool.pending):
                if await self._write(output, "spooled run"):
                    await anyio.to_thread.run_sync(self._spool.written, output)
                    logger.info("spooled run %s written to the database", _run_id(output))
                elif self._give_up(output):
                    where = await anyio.to_thread.run_sync(self._spool.set_aside, output)
                    logger.error(
                        "spooled run %s: the database keeps refusing its rows; set aside in %s",
                        _run_id(output),
                        where,
                    )
                else:
                    left += 1
            if not self._recovered:
                await self.recover()
        except _Outage as outage:
            logger.info("database still unavailable for the spool (%s)", outage.reason)
            return False
        except Exception:
            log_fault(logger, "retrying the spool failed")
            return False
        return left == 0 and self._recovered

    async def _write(self, output: RunOutput, what: str) -> bool:
        """Write one output; True when the database has it (or its session is gone).

        False for a refusal caused by the rows themselves; `_Outage` when the
        database cannot be used at all.
        """
        run_id = _run_id(output)
        try:
            with anyio.fail_after(DATABASE_WRITE_TIMEOUT_S):
                await self._store.write_run_output(output)
        except SessionGone:
            logger.info("%s %s: its session is gone; dropped", what, run_id)
        except Exception as exc:
            if not _about_the_rows(exc):
                raise _Outage(_name(exc)) from None
            logger.warning("%s %s: the database refused its rows (%s)", what, run_id, _name(exc))
            self._failures[run_id] = self._failures.get(run_id, 0) + 1
            return False
        self._failures.pop(run_id, None)
        return True

    def _give_up(self, output: RunOutput) -> bool:
        return self._failures.get(_run_id(output), 0) >= MAX_DATA_FAILURES

    async def recover(self) -> None:
        """Finish, as `interrupted`, the runs this instance was generating when it last stopped.

        A shared run another instance may still be streaming or ending waits
        (this is tried again until it has ended); one that has ended elsewhere
        was written by whoever ended it, from Redis' copy: its checkpoint, which
        may hold less than followers saw (or more than they were shown), goes.
        """
        checkpoints = await anyio.to_thread.run_sync(self._spool.checkpoints)
        stale = [cp for cp in checkpoints if not self._known(_run_id(cp))]
        where = await self._where([_run_id(cp) for cp in stale])
        cleared: list[uuid.UUID] = []
        waiting = with_text = ended_elsewhere = 0
        for output in stale:
            run_id = _run_id(output)
            status = where.get(run_id)
            if status in _HELD_ELSEWHERE:
                waiting += 1
            elif status is not None:
                cleared.append(run_id)
                ended_elsewhere += 1
            elif await self._write(output, "interrupted run"):
                cleared.append(run_id)
                with_text += 1
            elif self._give_up(output):
                spot = await anyio.to_thread.run_sync(self._spool.set_aside, output)
                logger.error(
                    "interrupted run %s: the database keeps refusing its rows; set aside in %s",
                    run_id,
                    spot,
                )
                cleared.append(run_id)
        await anyio.to_thread.run_sync(self._spool.clear_checkpoints, cleared)
        # (After the checkpoints' rows landed: those runs are no orphans.)
        orphans = await self._store.orphaned_replies(
            self._spool.instance_id, before=self._started_at
        )
        orphans = [o for o in orphans if not self._known(o.reply_id)]
        where = await self._where([o.reply_id for o in orphans])
        without_text = 0
        for orphan in orphans:
            status = where.get(orphan.reply_id)
            if status in _HELD_ELSEWHERE:
                waiting += 1
                continue
            if status is not None:
                ended_elsewhere += 1  # its rows are on their way from whoever ended it
                continue
            await self._write(
                RunOutput(
                    owner=orphan.owner,
                    session_id=orphan.session_id,
                    rows=[
                        OutputRow(
                            id=orphan.reply_id, role="assistant", content="", status="interrupted"
                        )
                    ],
                    parent_id=orphan.user_message_id,
                ),
                "interrupted run",
            )
            without_text += 1
        self._recovered = not waiting and len(cleared) == len(stale)
        if with_text or without_text or ended_elsewhere:
            elsewhere = (
                f", {ended_elsewhere} ended by another instance from what it streamed"
                if ended_elsewhere
                else ""
            )
            logger.warning(
                "recovered %d run(s) interrupted by the last stop: %d with their saved text, "
                "%d with none%s",
                with_text + without_text + ended_elsewhere,
                with_text,
                without_text,
                elsewhere,
            )

    async def _where(self, run_ids: list[uuid.UUID]) -> dict[uuid.UUID, str | None]:
        """Each run's status in Redis; every one still held elsewhere while Redis cannot say."""
        if self._shared_status is None or not run_ids:
            return {}
        try:
            return await self._shared_status(run_ids)
        except Exception as exc:
            logger.info("recovery waits for Redis to say which runs are shared (%s)", _name(exc))
            return dict.fromkeys(run_ids, "live")


class _Outage(Exception):
    """The database cannot be used now: stop this pass, try again later."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _run_id(output: RunOutput) -> uuid.UUID:
    return output.rows[-1].id


def _about_the_rows(exc: Exception) -> bool:
    """Whether the database refused these rows (not: could not be used at all)."""
    if isinstance(exc, DataError | IntegrityError):
        return True
    if isinstance(exc, DBAPIError):
        return False  # connection, operational, programming (schema) errors
    # Our own code or the driver failing on a value before it was sent.
    return isinstance(exc, StatementError | ValueError | TypeError)


def _name(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None)  # SQLAlchemy's wrapper: the driver's own error says more
    return type(cause).__name__ if cause is not None else type(exc).__name__
