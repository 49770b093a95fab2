"""The suite-wide secret guard catches what it must (or the guard proves nothing)."""

from __future__ import annotations

import asyncio
import logging

from starlette.types import Receive, Scope, Send

from tests.support.sentinels import SENTINEL_API_KEY, WATCH, GuardedApp, WatchingHandler


def test_a_sentinel_split_across_two_writes_is_caught() -> None:
    async def leaky(scope: Scope, receive: Receive, send: Send) -> None:
        half = len(SENTINEL_API_KEY) // 2
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send(
            {
                "type": "http.response.body",
                "body": b"key=" + SENTINEL_API_KEY[:half].encode(),
                "more_body": True,
            }
        )
        await send(
            {
                "type": "http.response.body",
                "body": SENTINEL_API_KEY[half:].encode(),
                "more_body": False,
            }
        )

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    async def send(message: object) -> None:
        pass

    before = len(WATCH.violations)
    asyncio.run(GuardedApp(leaky)({"type": "http", "path": "/leak"}, receive, send))  # type: ignore[arg-type]
    caught = WATCH.violations[before:]
    del WATCH.violations[before:]  # this leak was on purpose
    assert len(caught) == 1 and "/leak" in caught[0]


def test_a_sentinel_in_a_log_record_is_caught() -> None:
    before = len(WATCH.violations)
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "using key %s", (SENTINEL_API_KEY,), None
    )
    WatchingHandler().emit(record)
    caught = WATCH.violations[before:]
    del WATCH.violations[before:]
    assert len(caught) == 1
