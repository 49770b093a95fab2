"""Waiting on a condition with a deadline: the one way tests wait (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio

POLL_S = 0.02


def wait_until(condition: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(POLL_S)


async def wait_until_async(
    condition: Callable[[], Awaitable[object]], timeout: float = 10.0, what: str = ""
) -> None:
    with anyio.fail_after(timeout):
        while not await condition():
            await anyio.sleep(POLL_S)
