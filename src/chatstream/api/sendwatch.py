"""Sending to a client that may stop reading, or be gone.

uvicorn's send waits while the client's buffers are full. `SendWatch` notes
when a send started waiting; its watcher ends the connection's work (cancels
the scope it was bound to) once a send has waited `timeout_s`, and so does a
send that fails because the client left. The runs the connection followed
go on without it: a client too slow for its stream never slows the run, nor
anyone else, and what it did not read is not buffered for it beyond the
transport's own high-water mark.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import anyio
import anyio.lowlevel
from starlette.types import Message, Send


class SendWatch:
    def __init__(self, send: Send, timeout_s: float) -> None:
        self._send = send
        self._timeout_s = timeout_s
        self._in_flight = 0
        self._since = 0.0
        self._clock = asyncio.get_running_loop().time
        self._scope: anyio.CancelScope | None = None
        self.stalled = False

    def bind(self, scope: anyio.CancelScope) -> None:
        """The scope of everything the connection runs: cancelled when it is done for."""
        self._scope = scope

    async def send(self, message: Message) -> None:
        if not self._in_flight:
            self._since = self._clock()
        self._in_flight += 1
        try:
            await self._send(message)
        except (OSError, RuntimeError):
            # The client left between two messages (uvicorn raises an OSError,
            # Starlette a RuntimeError once a socket is closed): end quietly.
            if self._scope is not None:
                self._scope.cancel()
            await anyio.lowlevel.checkpoint()
            raise
        finally:
            self._in_flight -= 1

    async def drive(self, sending: Coroutine[Any, Any, None], waiting_on: Any) -> None:
        """Finish a send that was started elsewhere (`EagerSend`) and had to wait.

        `sending` suspended on `waiting_on` (the future it awaits, or None for
        a bare yield); it is driven from here like any other send, so a client
        that stops reading is dropped after the same timeout.
        """
        if not self._in_flight:
            self._since = self._clock()
        self._in_flight += 1
        try:
            while True:
                try:
                    if waiting_on is None:
                        await anyio.lowlevel.checkpoint()
                    else:
                        # As a task does with a future its coroutine yields: it is
                        # ours to wait on now (else awaiting it again is refused).
                        waiting_on._asyncio_future_blocking = False
                        await waiting_on
                except BaseException:
                    sending.close()
                    raise
                try:
                    waiting_on = sending.send(None)
                except StopIteration:
                    return
        except (OSError, RuntimeError):
            if self._scope is not None:
                self._scope.cancel()
            await anyio.lowlevel.checkpoint()
            raise
        finally:
            self._in_flight -= 1

    async def watch(self) -> None:
        while True:
            await anyio.sleep(self._timeout_s / 4)
            if self._in_flight and self._clock() - self._since > self._timeout_s:
                self.stalled = True
                if self._scope is not None:
                    self._scope.cancel()
                return
