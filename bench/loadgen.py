"""A light load generator for streaming HTTP endpoints.

Each virtual user opens a connection, sends one POST, counts tokens in the
response bytes as they arrive (occurrences of a marker, with no parsing
beyond that), and starts over when the response ends, for as long as the
level lasts. It records time to first token and stream durations, and only
counts what completes inside the measurement window.
"""

from __future__ import annotations

import asyncio
import base64
import os
import statistics
import time
from dataclasses import dataclass, field


@dataclass
class Target:
    name: str
    host: str
    port: int
    path: str
    body: bytes
    marker: bytes  # one occurrence per token in the response bytes
    # In `body`, replaced by a new id for every request (the AI SDK's chat id: each
    # stream its own chat, as each native stream is its own session).
    unique: bytes | None = None
    _count: int = 0

    def request(self) -> bytes:
        body = self.body
        if self.unique is not None:
            self._count += 1
            body = body.replace(self.unique, b"bench-%d" % self._count)
        return (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body


@dataclass
class LevelResult:
    streams: int = 0
    tokens: int = 0
    failures: int = 0
    ttft_s: list[float] = field(default_factory=list)
    durations_s: list[float] = field(default_factory=list)
    window_s: float = 0.0

    def record(
        self, window: _Window, started: float, first: float | None, ok: bool, ended: float
    ) -> None:
        """Count one stream by the window: its TTFT when its first token arrived in
        it (so an overloaded server shows long waits, not no data), the stream
        itself when it started in it."""
        if first is not None and window.start <= first <= window.end:
            self.ttft_s.append(first - started)
        if window.start <= started <= window.end:
            self.streams += 1
            if not ok:
                self.failures += 1
            else:
                self.durations_s.append(ended - started)

    def summary(self) -> dict[str, float]:
        def pct(values: list[float], q: float) -> float:
            if not values:
                return float("nan")
            ordered = sorted(values)
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

        return {
            "streams": self.streams,
            "failures": self.failures,
            "tokens_per_s": self.tokens / self.window_s if self.window_s else 0.0,
            "ttft_p50_ms": pct(self.ttft_s, 0.5) * 1000,
            "ttft_p99_ms": pct(self.ttft_s, 0.99) * 1000,
            "duration_mean_s": statistics.fmean(self.durations_s)
            if self.durations_s
            else float("nan"),
        }


class _Window:
    """Tokens are counted by arrival time: only those arriving inside the window."""

    def __init__(self, start: float, end: float) -> None:
        self.start = start
        self.end = end
        self.tokens = 0


class _Stream(asyncio.Protocol):
    def __init__(
        self, target: Target, window: _Window, done: asyncio.Future[tuple[float | None, int, bool]]
    ) -> None:
        self._target = target
        self._window = window
        self._done = done
        self._tail = b""
        self._tokens = 0
        self._first: float | None = None
        self._status_ok: bool | None = None
        self._keep = len(target.marker) - 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; both have write().
        transport.write(self._target.request())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self._status_ok is None:
            self._status_ok = data.startswith(b"HTTP/1.1 200")
        buffer = self._tail + data
        found = buffer.count(self._target.marker)
        if found:
            now = time.perf_counter()
            if self._first is None:
                self._first = now
            self._tokens += found
            if self._window.start <= now <= self._window.end:
                self._window.tokens += found
        self._tail = buffer[-self._keep :]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_result(
                (self._first, self._tokens, bool(self._status_ok) and exc is None)
            )


async def _one_stream(
    target: Target, window: _Window
) -> tuple[float, float | None, int, bool, float]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[float | None, int, bool]] = loop.create_future()
    started = time.perf_counter()
    try:
        await loop.create_connection(
            lambda: _Stream(target, window, done), target.host, target.port
        )
        first, tokens, ok = await done
    except OSError:
        return started, None, 0, False, time.perf_counter()
    return started, first, tokens, ok, time.perf_counter()


async def run_level(target: Target, users: int, warmup_s: float, window_s: float) -> LevelResult:
    """`users` concurrent streams for warmup + window seconds.

    Tokens count when they arrive inside the window, time to first token
    when the first token does, stream counts and durations when the stream
    starts inside it.
    """
    result = LevelResult(window_s=window_s)
    begin = time.perf_counter()
    window_start = begin + warmup_s
    window_end = window_start + window_s
    window = _Window(window_start, window_end)

    async def user(index: int) -> None:
        # Stagger the starts so the level ramps up instead of arriving in one burst.
        await asyncio.sleep(warmup_s * 0.5 * index / users)
        while time.perf_counter() < window_end:
            started, first, _tokens, ok, ended = await _one_stream(target, window)
            result.record(window, started, first, ok, ended)

    await asyncio.gather(*(user(i) for i in range(users)))
    result.tokens = window.tokens
    return result


# --- WebSocket ------------------------------------------------------------------


@dataclass
class SocketTarget:
    """`/ws/chat`: one socket per virtual user, its chats one after another."""

    name: str
    host: str
    port: int
    path: str
    message: bytes  # one chat frame's JSON
    marker: bytes = b'"type":"delta"'
    end: bytes = b'"type":"done"'

    def handshake(self) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        return (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()

    def frame(self) -> bytes:
        """The chat as a masked client text frame."""
        payload = self.message
        mask = os.urandom(4)
        size = len(payload)
        head = (
            bytes([0x81, 0x80 | size])
            if size < 126
            else bytes([0x81, 0x80 | 126]) + size.to_bytes(2, "big")
        )
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return head + mask + masked


class _Socket(asyncio.Protocol):
    """Counts tokens in server frames (unmasked, so markers appear as they are)."""

    def __init__(self, target: SocketTarget, window: _Window) -> None:
        self._target = target
        self._window = window
        self._keep = max(len(target.marker), len(target.end)) - 1
        self._tail = b""
        self._upgraded = False
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stream_done: asyncio.Future[None] | None = None
        self.first: float | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self._target.handshake())  # type: ignore[attr-defined]

    def start_stream(self) -> asyncio.Future[None]:
        self.first = None
        self._stream_done = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(self._target.frame())
        return self._stream_done

    def data_received(self, data: bytes) -> None:
        if not self._upgraded:
            head, sep, rest = data.partition(b"\r\n\r\n")
            if not sep or not head.startswith(b"HTTP/1.1 101"):
                self.transport.close()  # type: ignore[union-attr]
                return
            self._upgraded = True
            self.opened.set_result(None)
            data = rest
        buffer = self._tail + data
        found = buffer.count(self._target.marker)
        if found:
            now = time.perf_counter()
            if self.first is None:
                self.first = now
            if self._window.start <= now <= self._window.end:
                self._window.tokens += found
        if (
            self._target.end in buffer
            and self._stream_done is not None
            and not self._stream_done.done()
        ):
            self._stream_done.set_result(None)
        self._tail = buffer[-self._keep :]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._stream_done is not None and not self._stream_done.done():
            self._stream_done.set_exception(ConnectionError("socket closed mid-stream"))
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("upgrade refused"))


async def run_socket_level(
    target: SocketTarget, users: int, warmup_s: float, window_s: float
) -> LevelResult:
    """Like `run_level`, over one long-lived socket per user."""
    result = LevelResult(window_s=window_s)
    window_start = time.perf_counter() + warmup_s
    window_end = window_start + window_s
    window = _Window(window_start, window_end)
    loop = asyncio.get_running_loop()

    async def user(index: int) -> None:
        await asyncio.sleep(warmup_s * 0.5 * index / users)
        _, protocol = await loop.create_connection(
            lambda: _Socket(target, window), target.host, target.port
        )
        await protocol.opened
        try:
            while time.perf_counter() < window_end:
                started = time.perf_counter()
                try:
                    await protocol.start_stream()
                    ok = True
                except ConnectionError:
                    ok = False
                result.record(window, started, protocol.first, ok, time.perf_counter())
                if not ok:
                    return
        finally:
            if protocol.transport is not None:
                protocol.transport.close()

    await asyncio.gather(*(user(i) for i in range(users)))
    result.tokens = window.tokens
    return result


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    """Block until something accepts connections on 127.0.0.1:`port`."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
