"""The rate window's memory storage expires old entries on the event loop, not in a thread."""

from __future__ import annotations

import asyncio

import pytest

from chatstream.limiting.ratelimit import InlineExpiryMemoryStorage


def test_expiry_runs_inline_and_forgets_what_expired(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_threads(*args: object, **kwargs: object) -> object:
        raise AssertionError("a worker thread was used")

    monkeypatch.setattr(asyncio, "to_thread", no_threads)

    async def scenario() -> dict[str, object]:
        storage = InlineExpiryMemoryStorage()
        assert await storage.acquire_entry("gone", limit=5, expiry=0)  # expires at once
        assert await storage.acquire_entry("kept", limit=5, expiry=60)
        # The next hit schedules an expiry pass; let it run.
        assert await storage.acquire_entry("kept", limit=5, expiry=60)
        for _ in range(5):
            await asyncio.sleep(0)
        timer = storage.timer
        assert timer is not None
        await timer
        return dict(storage.events)

    events = asyncio.run(scenario())
    assert "gone" not in events
    assert len(events["kept"]) == 2  # type: ignore[arg-type]
