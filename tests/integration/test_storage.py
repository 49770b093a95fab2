"""The repository against real databases: the idempotency race decided by the unique index."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from chatstream.storage.db import Database
from chatstream.storage.repository import DuplicateRequest, Store


async def race(url: str) -> list[object]:
    database = Database(url)
    store = Store(database)
    try:

        async def attempt() -> object:
            try:
                return await store.begin_turn(
                    "alice",
                    session_id=None,
                    new_session_model=None,
                    new_session_system_prompt=None,
                    message="same request",
                    history_limit=10,
                    reply_id=uuid.uuid4(),
                    client_message_id="race-key",
                )
            except DuplicateRequest as exc:
                return exc

        results = await asyncio.gather(*(attempt() for _ in range(5)))
        earlier = await store.find_request("alice", "race-key")
        assert earlier is not None
        winners = [r for r in results if not isinstance(r, DuplicateRequest)]
        assert len(winners) == 1
        assert winners[0].user_message_id == earlier.user_message_id  # type: ignore[attr-defined]
        sessions = await store.list_sessions("alice", limit=50, cursor=None)
        assert len(sessions.items) == 1  # the losers' new sessions were rolled back
        return results
    finally:
        await database.aclose()


def test_concurrent_repeats_on_sqlite(database_url: str) -> None:
    results = asyncio.run(race(database_url))
    assert sum(isinstance(r, DuplicateRequest) for r in results) == 4


@pytest.mark.postgres
def test_concurrent_repeats_on_postgres(postgres_url: str) -> None:
    results = asyncio.run(race(postgres_url))
    assert sum(isinstance(r, DuplicateRequest) for r in results) == 4
