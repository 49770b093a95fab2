"""A repeated request (same `client_message_id`) gets the first run's events.

While the first run is known to the registry, the repeat simply follows it
from its first event. Once it has left memory (after
`CHATSTREAM_RUN_RETENTION_S`), its events are gone but its answer is saved:
`StoredRun` replays that answer as a condensed stream (start, the whole text
as one delta, an error if it ended in one, done), through the same
`RunHandle` interface, so every transport serves it unchanged.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager

from chatstream.runs.events import ErrorEvent, Event, MessageStatus
from chatstream.runs.log import MemoryEventLog
from chatstream.storage.models import MessageRow


class StoredRun:
    """An ended run, rebuilt from its stored answer."""

    def __init__(self, answer: MessageRow, user_message_id: uuid.UUID) -> None:
        self.id = answer.id
        self.session_id = answer.session_id
        self.status: MessageStatus = answer.status  # type: ignore[assignment]
        self.error: ErrorEvent | None = None
        self.log = MemoryEventLog()
        self.log.append(
            {
                "type": "start",
                "session_id": str(answer.session_id),
                "message_id": str(answer.id),
                "user_message_id": str(user_message_id),
                "model": answer.model or "",
            }
        )
        if answer.content:
            self.log.append({"type": "delta", "text": answer.content})
        if self.status in ("error", "interrupted"):
            self.error = {
                "type": "error",
                "code": "server_shutdown" if self.status == "interrupted" else "upstream_error",
                "message": "The answer ended early; this is what was saved.",
                "retryable": True,
            }
            self.log.append(self.error)
        self.log.append(
            {
                "type": "done",
                "message_id": str(answer.id),
                "status": self.status,
                "finish_reason": answer.finish_reason,
                "persisted": True,
                "usage": answer.usage,  # type: ignore[typeddict-item]
                "metrics": answer.metrics,  # type: ignore[typeddict-item]
            }
        )

    @property
    def live(self) -> bool:
        return False

    @property
    def last_seq(self) -> int:
        return self.log.last_seq

    def cancel(self, status: MessageStatus = "cancelled") -> bool:
        return False

    @asynccontextmanager
    async def follow(
        self, after: int = 0, idle_timeout: float | None = None
    ) -> AsyncIterator[AsyncIterator[list[Event]]]:
        async with aclosing(self.log.follow(after, idle_timeout or math.inf)) as events:
            yield events

    async def wait(self) -> None:
        return None
