"""The one way tests wait: on a condition, with a deadline, never on a bare sleep."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> T:
    """Poll `predicate` until it returns something truthy; return that, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s: {what or predicate}")
        time.sleep(interval)


async def wait_until_async(
    condition: Callable[[], Awaitable[object]], timeout: float = 10.0, what: str = ""
) -> None:
    """The same, on an event loop: await `condition` until it is truthy."""
    with anyio.fail_after(timeout):
        while not await condition():
            await anyio.sleep(0.01)
