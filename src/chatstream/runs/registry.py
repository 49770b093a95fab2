"""Live runs by id. The registry, not any connection, owns a run's task.

    admission = registry.admit(owner)      # capacity checked before any write
    ...                                    # commit the user message
    run = admission.start(run)             # the run's task starts in the registry

A run stays findable for `retention_s` after it ends, so late followers can
still replay it; beyond `max_retained` ended runs, or `max_retained_bytes` of
their events, the oldest are forgotten first (their answers are in the
database). On shutdown the registry stops admitting, gives live runs a
grace period, then interrupts the rest; each still persists what it has.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from types import TracebackType

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from chatstream.errors import ServerShutdown, ServiceUnavailable
from chatstream.logs import log_fault
from chatstream.runs.events import MessageStatus
from chatstream.runs.lifecycle import RunListeners, RunStarted
from chatstream.runs.log import MemoryEventLog
from chatstream.runs.run import Run

logger = logging.getLogger(__name__)

DEFAULT_RETAINED_BYTES = 64 * 1024 * 1024


class Admission:
    """A reserved slot for one run; `start` it or `release` it."""

    __slots__ = ("_registry", "_used", "owner")

    def __init__(self, registry: LocalRunRegistry, owner: str) -> None:
        self._registry = registry
        self.owner = owner
        self._used = False

    def start(self, run: Run) -> Run:
        if self._used:
            raise RuntimeError("admission already used")
        self._used = True
        self._registry.launch_admitted(run)
        return run

    def release(self) -> None:
        if not self._used:
            self._used = True
            self._registry.give_back_admission()


class LocalRunRegistry:
    """The runs of this process (implements `handle.RunRegistry`)."""

    def __init__(
        self,
        *,
        max_live_runs: int,
        retention_s: float,
        max_retained: int = 10000,
        max_retained_bytes: int = DEFAULT_RETAINED_BYTES,
        listeners: RunListeners | None = None,
    ) -> None:
        self._max_retained = max_retained
        self.max_retained_bytes = max_retained_bytes
        self._retained_sizes: dict[uuid.UUID, int] = {}  # ended runs' events, in bytes
        self._retained_bytes = 0
        self._listeners = listeners or RunListeners()
        self._max_live_runs = max_live_runs
        self._retention_s = retention_s
        self._runs: dict[uuid.UUID, Run] = {}
        self._live: set[Run] = set()
        self._reserved = 0
        self._accepting = True
        self._interrupting = False
        self._tasks: TaskGroup | None = None
        self._expiry: dict[uuid.UUID, asyncio.TimerHandle] = {}
        self._awaited: dict[uuid.UUID, list[asyncio.Future[None]]] = {}

    async def __aenter__(self) -> LocalRunRegistry:
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown(grace_s=0)
        assert self._tasks is not None
        await self._tasks.__aexit__(exc_type, exc, tb)
        for handle in self._expiry.values():
            handle.cancel()
        self._expiry.clear()

    # --- admission -------------------------------------------------------------

    def admit(self, owner: str) -> Admission:
        if not self._accepting:
            raise ServerShutdown("The server is shutting down; try again shortly.", retry_after=1)
        if len(self._live) + self._reserved >= self._max_live_runs:
            raise ServiceUnavailable("The server is at capacity; try again shortly.")
        self._reserved += 1
        return Admission(self, owner)

    def give_back_admission(self) -> None:
        """An admitted run that will not start (`Admission.release`)."""
        self._reserved -= 1

    def launch_admitted(self, run: Run) -> None:
        """Start driving an admitted run (`Admission.start`)."""
        assert self._tasks is not None, "registry used outside its lifespan"
        self._reserved -= 1
        self._runs[run.id] = run
        self._live.add(run)
        for waiter in self._awaited.pop(run.id, ()):
            if not waiter.done():
                waiter.set_result(None)
        self._tasks.start_soon(self._drive, run, name=f"run {run.id}")
        if self._interrupting:
            # Admitted before shutdown began, launched after the live runs were ended.
            run.stop("interrupted")

    async def _drive(self, run: Run) -> None:
        spec = run.spec
        self._listeners.run_started(
            RunStarted(spec.owner, spec.session_id, spec.message_id, spec.model)
        )
        record = None
        try:
            record = await run.execute()
        except Exception:
            # `execute` never raises; if it did, nothing else may notice.
            log_fault(logger, "run %s escaped its own supervision", run.id)
        finally:
            self._live.discard(run)
            loop = asyncio.get_running_loop()
            self._expiry[run.id] = loop.call_later(self._retention_s, self._forget, run.id)
            size = _retained_size(run)
            self._retained_sizes[run.id] = size
            self._retained_bytes += size
            # Retention is the same for every run, so the first entry ended first.
            while self._expiry and (
                len(self._expiry) > self._max_retained
                or self._retained_bytes > self.max_retained_bytes
            ):
                oldest, handle = next(iter(self._expiry.items()))
                handle.cancel()
                self._forget(oldest)
        if record is not None:
            self._listeners.run_finished(record)

    def _forget(self, run_id: uuid.UUID) -> None:
        self._expiry.pop(run_id, None)
        self._runs.pop(run_id, None)
        self._retained_bytes -= self._retained_sizes.pop(run_id, 0)

    # --- lookup ------------------------------------------------------------------

    async def get(self, run_id: uuid.UUID, owner: str) -> Run | None:
        """The run, if it exists and belongs to `owner` (else None, as if missing)."""
        return self.local(run_id, owner)

    def local(self, run_id: uuid.UUID, owner: str) -> Run | None:
        """The run, if this process has it and it belongs to `owner`."""
        run = self._runs.get(run_id)
        if run is None or run.owner != owner:
            return None
        return run

    async def launched(self, run_id: uuid.UUID, owner: str) -> Run | None:
        """The run, once it is launched here (bound it with a timeout).

        For a request that lost the race to start a run (same idempotency
        key): the winner commits its message, then launches the run.
        """
        run = self.local(run_id, owner)
        if run is not None or run_id in self._runs:
            return run
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._awaited.setdefault(run_id, []).append(waiter)
        try:
            await waiter
        finally:
            waiting = self._awaited.get(run_id)
            if waiting is not None and waiter in waiting:
                waiting.remove(waiter)
                if not waiting:
                    del self._awaited[run_id]
        return self.local(run_id, owner)

    def live_runs(self) -> list[Run]:
        return list(self._live)

    def stop(self, run_id: uuid.UUID, status: MessageStatus) -> bool:
        """Stop this process's run `run_id`, whoever owns it; False if it has none live."""
        run = self._runs.get(run_id)
        return run.stop(status) if run is not None else False

    async def live_in_session(self, session_id: uuid.UUID, owner: str) -> list[Run]:
        """The owner's live runs in one session, oldest first."""
        return [
            run
            for run in self._runs.values()
            if run.live and run.session_id == session_id and run.owner == owner
        ]

    def known(self, run_id: uuid.UUID) -> bool:
        """Whether this process has (or recently had) the run, whoever owns it."""
        return run_id in self._runs

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def live_count(self) -> int:
        return len(self._live)

    @property
    def known_count(self) -> int:
        return len(self._runs)

    @property
    def retained_bytes(self) -> int:
        """What the events of the ended runs still kept take."""
        return self._retained_bytes

    @property
    def follower_count(self) -> int:
        """Readers following runs right now, across every run still known."""
        return sum(run.followers for run in self._runs.values())

    # --- shutdown ------------------------------------------------------------------

    async def shutdown(self, grace_s: float) -> None:
        """Stop admitting; let live runs finish for `grace_s`, then interrupt the rest."""
        self._accepting = False
        if not self._live:
            self._interrupting = True
            return
        with anyio.move_on_after(grace_s):
            await self._wait_for_live_runs()
        if self._live:
            logger.warning("interrupting %d live run(s) at shutdown", len(self._live))
        self._interrupting = True
        for run in list(self._live):
            run.stop("interrupted")
        await self._wait_for_live_runs()

    async def _wait_for_live_runs(self) -> None:
        while self._live:
            for run in list(self._live):
                await run.finished.wait()
            # Let each finished run's task leave the live set.
            await anyio.lowlevel.checkpoint()


def _retained_size(run: Run) -> int:
    log = run.log
    return log.retained_bytes if isinstance(log, MemoryEventLog) else 0
