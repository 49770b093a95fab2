"""Answers a client asked not to keep (`store: false` in the Responses API).

A run is always persisted as it goes: that is what makes it resumable and
safe from a crash. An answer not to be stored is therefore forgotten once it
has ended: this post-run hook deletes its session (a new one: `store:
false` cannot continue a stored conversation) right after the run's rows
are committed. A run that ends before it was marked (an answer from the
cache can) is deleted by the marking itself; the two never both delete.

The mark lives in this process: a run taken over by another instance (this
one died) is finished and kept there.
"""

from __future__ import annotations

import logging
import uuid

from chatstream.runs.handle import RunHandle
from chatstream.runs.lifecycle import RunRecord
from chatstream.storage.repository import Store

logger = logging.getLogger(__name__)


class Unstored:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._marked: dict[uuid.UUID, tuple[str, uuid.UUID]] = {}

    async def forget_after(self, run: RunHandle, owner: str) -> None:
        """Delete `run`'s session once the run has ended."""
        self._marked[run.id] = (owner, run.session_id)
        if not (await run.state()).live:
            await self._forget(run.id)

    async def __call__(self, record: RunRecord) -> None:
        await self._forget(record.message_id)

    async def _forget(self, run_id: uuid.UUID) -> None:
        marked = self._marked.pop(run_id, None)
        if marked is None:
            return
        owner, session_id = marked
        await self._store.delete_session(owner, session_id)
        logger.debug("run %s ended and was not to be stored: its session is deleted", run_id)
