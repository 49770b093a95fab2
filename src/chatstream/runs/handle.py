"""What the API layer may do with runs: the seam for a shared (Redis) implementation.

The API layer types against these protocols only. `Run` and
`LocalRunRegistry` implement them for one process; a cross-instance
registry hands out handles to runs living in another process that follow,
cancel and report through Redis, behind the same surface.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from chatstream.runs.events import ErrorEvent, Event, MessageStatus


class RunHandle(Protocol):
    @property
    def id(self) -> uuid.UUID: ...

    @property
    def session_id(self) -> uuid.UUID: ...

    @property
    def live(self) -> bool: ...

    @property
    def status(self) -> MessageStatus | None:
        """The final status once the run has ended (and persisted), else None."""
        ...

    @property
    def error(self) -> ErrorEvent | None: ...

    @property
    def last_seq(self) -> int: ...

    def cancel(self, status: MessageStatus = "cancelled") -> bool:
        """Stop a live run (it still persists what it has). False if it had ended."""
        ...

    def follow(
        self, after: int = 0, idle_timeout: float | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[list[Event]]]:
        """Read the events after `after`, live, as batches (empty when idle)."""
        ...

    async def wait(self) -> None:
        """Return once the run has ended and its `done` event is in the log."""
        ...


class RunRegistry(Protocol):
    def get(self, run_id: uuid.UUID, owner: str) -> RunHandle | None:
        """The run, if it exists and belongs to `owner`; else None, exactly as if missing."""
        ...

    def live_in_session(self, session_id: uuid.UUID, owner: str) -> Sequence[RunHandle]:
        """The owner's live runs in one session, oldest first."""
        ...

    @property
    def live_count(self) -> int: ...

    @property
    def accepting(self) -> bool:
        """False once shutdown has begun: no new runs."""
        ...
