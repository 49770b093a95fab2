"""uvicorn's WebSocket protocol, with a bounded write buffer and closes that cannot hang.

uvicorn ends a connection with `transport.close()`, which waits until
everything queued has been written: a client that stopped reading keeps such
a connection open for ever, with what it did not read queued for it (in this
process, and megabytes more in the kernel). Here:

- the transport queues at most `WRITE_BUFFER_BYTES` before a send waits
  (uvicorn's flow control); with one frame in flight per task sending on the
  socket, that bounds what a stuck client holds in this process;
- a close that finds bytes still queued becomes an abort (a TCP reset: the
  queue, here and in the kernel, is dropped) if the connection has not gone
  `linger_s` later;
- the app closes with `close_or_abort`: a close frame if it can be handed
  over within `CLOSE_TIMEOUT_S`, else an abort at once (api/ws.py, for a
  client it has stopped waiting for).

`websocket_protocol(settings)` is the class `uvicorn_config` hands uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Any, cast

import anyio
from starlette.types import Scope
from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

from chatstream.config import Settings

# What the transport may queue before a send waits (asyncio's own default, made explicit).
WRITE_BUFFER_BYTES = 64 * 1024
ABORT = "chatstream.abort_connection"  # the scope key of this connection's abort
CLOSE_TIMEOUT_S = 1.0  # for a close frame to be handed to the transport


def websocket_protocol(settings: Settings) -> type[WebSocketsSansIOProtocol]:
    """The protocol class for uvicorn: a close still unsent after the send timeout is reset."""
    return type(
        "ChatstreamWebSocketProtocol",
        (BoundedWebSocketProtocol,),
        {"linger_s": settings.send_timeout_s},
    )


async def close_or_abort(websocket: WebSocket, code: int, reason: str = "") -> bool:
    """Close with `code`; reset the connection if the close frame cannot be sent in time.

    True if it was closed, False if reset (a client that reads nothing cannot
    take the close frame either: it would wait behind all it has not read).
    """
    with anyio.move_on_after(CLOSE_TIMEOUT_S):
        with contextlib.suppress(OSError, RuntimeError):  # gone already
            await websocket.close(code=code, reason=reason)
        return True
    abort_connection(websocket.scope)
    return False


def abort_connection(scope: Scope) -> bool:
    """Reset the connection under a WebSocket scope now; False if the server offers no way."""
    abort = scope.get(ABORT)
    if abort is None:
        return False
    cast(Callable[[], None], abort)()
    return True


class BoundedWebSocketProtocol(WebSocketsSansIOProtocol):
    linger_s = 10.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        inner = cast(asyncio.Transport, transport)
        inner.set_write_buffer_limits(high=WRITE_BUFFER_BYTES)
        self._lingering = _LingeringTransport(inner, self.loop, self.linger_s)
        super().connection_made(cast(asyncio.Transport, self._lingering))

    def connection_lost(self, exc: Exception | None) -> None:
        self._lingering.gone()
        super().connection_lost(exc)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope: dict[str, Any] | None = getattr(self, "scope", None)
        if scope is not None:
            scope[ABORT] = self._lingering.abort


class _LingeringTransport:
    """A transport whose `close` turns into an abort when what it queued does not drain."""

    def __init__(
        self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, linger_s: float
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._linger_s = linger_s
        self._timer: asyncio.TimerHandle | None = None
        self._gone = False

    def close(self) -> None:
        transport = self._transport
        transport.close()
        if self._gone or self._timer is not None or not transport.get_write_buffer_size():
            return  # nothing queued: asyncio closes it at once
        self._timer = self._loop.call_later(self._linger_s, self.abort)

    def abort(self) -> None:
        """Reset the connection: nothing queued for it is sent, here or by the kernel."""
        if self._gone:
            return
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            # Without this, the kernel would go on offering its queue to the client.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._transport.abort()

    def gone(self) -> None:
        self._gone = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def __getattr__(self, name: str) -> Any:  # everything else is the transport's own
        return getattr(self._transport, name)
