"""Runs shared by every instance on one Redis: this process's, and everyone else's.

`SharedRunRegistry` is the local registry (it owns and drives the runs
this instance generates, exactly as in one process) whose lookups also
reach the runs of other instances, as `RemoteRun` handles. This instance's
runs are found in memory first: following a run on the instance that
generates it costs no Redis round trip.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import anyio

from chatstream.runs.handle import RunHandle
from chatstream.runs.lifecycle import RunListeners
from chatstream.runs.redis_remote import SharedRuns
from chatstream.runs.registry import LocalRunRegistry
from chatstream.runs.run import Run

# A run launched elsewhere reaches Redis within a flush tick; poll that often.
REMOTE_POLL_S = 0.02


class SharedRunRegistry(LocalRunRegistry):
    def __init__(
        self,
        *,
        shared: SharedRuns,
        max_live_runs: int,
        retention_s: float,
        max_retained: int = 10000,
        listeners: RunListeners | None = None,
    ) -> None:
        super().__init__(
            max_live_runs=max_live_runs,
            retention_s=retention_s,
            max_retained=max_retained,
            listeners=listeners,
        )
        self._shared = shared

    async def get(self, run_id: uuid.UUID, owner: str) -> RunHandle | None:  # type: ignore[override]
        local = self.local(run_id, owner)
        if local is not None:
            return local
        return await self._shared.get(run_id, owner)

    async def live_in_session(  # type: ignore[override]
        self, session_id: uuid.UUID, owner: str
    ) -> Sequence[RunHandle]:
        local = await super().live_in_session(session_id, owner)
        ids = {run.id for run in local}
        remote = [
            run
            for run in await self._shared.live_in_session(session_id, owner)
            if run.id not in ids
        ]
        return [*local, *remote]

    async def launched(self, run_id: uuid.UUID, owner: str) -> RunHandle | None:  # type: ignore[override]
        """The run, once launched here or anywhere else (bound it with a timeout)."""
        while True:
            run = await self.get(run_id, owner)
            if run is not None or self.known(run_id):
                return run
            with anyio.move_on_after(REMOTE_POLL_S):
                return await super().launched(run_id, owner)

    def stop_local(self, run_id: uuid.UUID, status: str) -> bool:
        """Stop this process's run `run_id` (a cancel from another instance)."""
        run: Run | None = self._runs.get(run_id)
        if run is None:
            return False
        return run.stop("interrupted" if status == "interrupted" else "cancelled")
