"""The session events hub (sans-I/O): a watcher that falls behind is dropped, never buffered."""

from __future__ import annotations

import uuid

import anyio

from chatstream.runs.session_events import SessionEvents, SessionUpdatedEvent


def _updated(session_id: uuid.UUID, n: int) -> SessionUpdatedEvent:
    return {
        "type": "session.updated",
        "session_id": str(session_id),
        "title": f"title {n}",
        "model": None,
        "system_prompt": None,
        "updated_at": "2026-01-01T00:00:00Z",
    }


def test_a_watcher_that_falls_behind_is_dropped_and_holds_nothing() -> None:
    hub = SessionEvents(queue_limit=8)
    session_id = uuid.uuid4()

    async def main() -> None:
        with hub.subscribe(session_id) as stuck, hub.subscribe(session_id) as reader:
            for n in range(10_000):
                hub.publish(session_id, _updated(session_id, n))
                if n % 4 == 3:
                    assert len(await reader.next(0)) == 4
            assert stuck.dropped and not reader.dropped
            assert await stuck.next(0) == []  # nothing kept for it
        assert hub.subscriber_count == 0

    anyio.run(main)


def test_events_reach_only_their_session_s_watchers_and_close_ends_them() -> None:
    hub = SessionEvents()
    one, other = uuid.uuid4(), uuid.uuid4()

    async def main() -> None:
        with hub.subscribe(one) as watching, hub.subscribe(other) as elsewhere:
            hub.publish(one, _updated(one, 1))
            assert [e["title"] for e in await watching.next(1)] == ["title 1"]
            assert await elsewhere.next(0) == []
            hub.close()
            assert watching.dropped and elsewhere.dropped
        with hub.subscribe(one) as late:
            assert late.dropped  # after close, a new watcher ends at once

    anyio.run(main)
