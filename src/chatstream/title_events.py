"""The model's auto-title, announced to the session's watchers (`session.updated`).

With `CHATSTREAM_AUTO_TITLE=model` the built-in `AutoTitle` hook titles a
session after its answer; this wraps it and tells the session's watchers
the title it set. (With `message` the title is stored with the first user
message, before the answer: a watcher's stream notices it at that run's
`run.ended`, `api/session_stream.py`.)
"""

from __future__ import annotations

from chatstream.errors import ChatstreamError
from chatstream.hooks import Hook
from chatstream.runs.lifecycle import RunRecord
from chatstream.runs.session_events import SessionEvents
from chatstream.storage.repository import Store


class TitleAnnouncer:
    """A post-run hook: `auto_title`, then `session.updated` if it titled the session."""

    def __init__(self, auto_title: Hook, store: Store, events: SessionEvents) -> None:
        self._auto_title = auto_title
        self._store = store
        self._events = events

    async def __call__(self, record: RunRecord) -> None:
        untitled = await self._untitled(record)
        await self._auto_title(record)
        if not untitled:
            return
        try:
            row, _ = await self._store.get_session(record.owner, record.session_id)
        except ChatstreamError:
            return  # deleted meanwhile, or the database is away: nothing to announce
        if row.title is None:
            return
        self._events.session_updated(record.session_id, row)

    async def _untitled(self, record: RunRecord) -> bool:
        if not record.persisted:
            return False
        try:
            first = await self._store.untitled_first_message(record.owner, record.session_id)
        except ChatstreamError:
            return False
        return first is not None
