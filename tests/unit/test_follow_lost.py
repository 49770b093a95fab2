"""A non-streamed answer whose run's stream is lost fails with that error, as itself.

Not wrapped in the follow's task group (an `ExceptionGroup` would reach the
app as an unexpected failure, a 500): the error handlers answer it as the
typed, retryable 503 it is.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from starlette.requests import Request
from starlette.types import Message

from chatstream.api.follow import follow_to_end
from chatstream.fleet.redis_remote import RunStreamLost
from chatstream.runs.events import Event


class LosingRun:
    id = uuid.UUID(int=1)
    session_id = uuid.UUID(int=2)

    @asynccontextmanager
    async def follow(
        self, after: int = 0, idle_timeout: float | None = None, push: Any = None
    ) -> AsyncIterator[AsyncIterator[list[Event]]]:
        yield self._read()

    async def _read(self) -> AsyncIterator[list[Event]]:
        yield [Event(1, {"type": "delta", "text": "so far"})]
        raise RunStreamLost()


def test_a_lost_stream_is_raised_as_itself() -> None:
    async def receive() -> Message:
        await anyio.sleep_forever()
        raise AssertionError

    read: list[list[Event]] = []

    async def main() -> None:
        request = Request({"type": "http", "method": "POST", "headers": []}, receive)
        await follow_to_end(LosingRun(), request, read.append)  # type: ignore[arg-type]

    with pytest.raises(RunStreamLost) as raised:
        anyio.run(main)
    assert raised.value.status == 503 and raised.value.retryable
    assert [[e.seq for e in batch] for batch in read] == [[1]]
