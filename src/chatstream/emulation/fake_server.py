"""`chatstream fake-upstream`: the emulator served over real HTTP/1.1.

Tests and benchmarks point the real `AsyncOpenAI` client at it, so real
stream bytes cross a real socket. It is deliberately small and fast (an
asyncio protocol with the httptools parser): in a benchmark it is the
baseline chatstream is measured against, and in fault-injection tests it has
to do what a framework would not let it do, such as reset a connection
mid-stream.

Besides `POST /v1/chat/completions` and `GET /v1/models` it answers:
  GET  /_fake/requests   the chat request bodies received, oldest first
  GET  /_fake/stats      open connections, streams in progress and stalled, requests seen
  POST /_fake/release    let every stalled stream go on
  POST /_fake/reset      forget requests and `fail_times` counters

Tests running it in a thread can read the same state directly and wait on
`changed`, a `threading.Condition` notified whenever a request arrives or a
connection opens or closes.

Why this ships in the package rather than under tests/: `chatstream
fake-upstream` is how `make bench` and anyone testing a frontend against
chatstream get a scriptable, deterministic model server with no network and
no key. The control routes are what make it usable from another process
(wait for a stall, release it, read what was asked) without sleeping; they
are only on this server, never on chatstream itself, and the `[[fake …]]`
directives it obeys are ignored by the offline demo a user talks to.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any, cast

import httptools
import orjson

from chatstream.emulation.emulator import Drop, Emulator, Send, Sleep, Stall
from chatstream.emulation.script import Script

_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 429: b"Too Many Requests"}


class FakeUpstream:
    def __init__(self, defaults: Script | None = None) -> None:
        self.emulator = Emulator(defaults)
        self.requests: list[dict[str, Any]] = []
        self.connections: set[_Connection] = set()
        self.active_streams = 0
        self.stalled_streams = 0
        self.changed = threading.Condition()
        self._release = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle ------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._loop = asyncio.get_running_loop()
        self._release = asyncio.Event()
        self._server = await self._loop.create_server(
            lambda: _Connection(self), host, port, backlog=4096, reuse_address=True
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for connection in list(self.connections):
                connection.drop()
            await self._server.wait_closed()

    # --- control (thread-safe) -----------------------------------------------

    def release(self, wait_for: int = 0) -> None:
        """Let every stalled stream continue, once at least `wait_for` of them are stalled.

        Releasing before a stream reaches its stall would release nothing.
        """
        if wait_for:
            self.wait_for(lambda: self.stalled_streams >= wait_for)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._release_now)

    def _release_now(self) -> None:
        self._release.set()
        self._release = asyncio.Event()

    def reset(self) -> None:
        with self.changed:
            self.requests.clear()
        self.emulator = Emulator(self.emulator.defaults)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        with self.changed:
            if not self.changed.wait_for(predicate, timeout):
                raise TimeoutError("fake upstream: condition not reached in time")

    def _notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    @property
    def open_connections(self) -> int:
        return len(self.connections)

    def stats(self) -> dict[str, int]:
        return {
            "open_connections": self.open_connections,
            "active_streams": self.active_streams,
            "stalled_streams": self.stalled_streams,
            "requests": len(self.requests),
        }

    # --- request handling -------------------------------------------------------

    async def handle(
        self, conn: _Connection, method: bytes, path: str, body: bytes, authorization: str
    ) -> bool:
        """Answer one request; return False if the connection must close."""
        if method == b"POST" and path.endswith("/chat/completions"):
            return await self._chat(conn, body, authorization)
        if method == b"GET" and path.endswith("/models"):
            conn.respond(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
        elif path == "/_fake/requests":
            conn.respond(200, self.requests)
        elif path == "/_fake/stats":
            conn.respond(200, self.stats())
        elif method == b"POST" and path == "/_fake/release":
            self._release_now()
            conn.respond(200, {"released": True})
        elif method == b"POST" and path == "/_fake/reset":
            self.reset()
            conn.respond(200, {"reset": True})
        else:
            conn.respond(404, {"error": {"message": "not found"}})
        return True

    async def _chat(self, conn: _Connection, body: bytes, authorization: str) -> bool:
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            conn.respond(400, {"error": {"message": "bad json"}})
            return True
        with self.changed:
            self.requests.append(request)
            self.changed.notify_all()
        reply = self.emulator.reply(request, authorization)
        if not reply.streaming:
            data = b"".join(a.data for a in reply.body if isinstance(a, Send))
            conn.respond_raw(reply.status, reply.headers, data)
            return True
        conn.start_chunked(reply.headers)
        self.active_streams += 1
        try:
            for action in reply.body:
                if isinstance(action, Send):
                    conn.write_chunk(action.data)
                    if conn.paused:
                        await conn.drained()
                elif isinstance(action, Sleep):
                    await asyncio.sleep(action.seconds)
                elif isinstance(action, Stall):
                    self.stalled_streams += 1
                    self._notify()
                    try:
                        await self._release.wait()
                    finally:
                        self.stalled_streams -= 1
                elif isinstance(action, Drop):
                    conn.drop(reset=action.reset)
                    return False
                if conn.closed:
                    return False
            conn.end_chunked()
            return True
        finally:
            self.active_streams -= 1


class _Connection(asyncio.Protocol):
    def __init__(self, server: FakeUpstream) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.closed = False
        self.paused = False
        self._drain: asyncio.Event | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._authorization = ""
        self._queue: list[tuple[bytes, str, bytes, str, bool]] = []
        self._task: asyncio.Task[None] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        self.server._notify()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self._task is not None:
            self._task.cancel()
        if self._drain is not None:
            self._drain.set()
        self.server._notify()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.respond(400, {"error": {"message": "bad request"}})
            self.drop()

    def pause_writing(self) -> None:
        self.paused = True
        self._drain = asyncio.Event()

    def resume_writing(self) -> None:
        self.paused = False
        if self._drain is not None:
            self._drain.set()

    async def drained(self) -> None:
        if self._drain is not None:
            await self._drain.wait()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"authorization":
            self._authorization = value.decode("latin-1")

    def on_message_complete(self) -> None:
        path = self._url.split(b"?", 1)[0].decode("latin-1")
        request = (
            self.parser.get_method(),
            path,
            b"".join(self._body),
            self._authorization,
            self.parser.should_keep_alive(),
        )
        self._url, self._body, self._authorization = b"", [], ""
        self._queue.append(request)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        try:
            while self._queue and not self.closed:
                method, path, body, authorization, keep_alive = self._queue.pop(0)
                if (
                    not await self.server.handle(self, method, path, body, authorization)
                    or not keep_alive
                ):
                    self.drop()
                    return
        finally:
            self._task = None

    # writing
    def _write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def respond(self, status: int, payload: Any) -> None:
        self.respond_raw(status, [("content-type", "application/json")], orjson.dumps(payload))

    def respond_raw(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        head = _status_line(status) + _headers([*headers, ("content-length", str(len(body)))])
        self._write(head + body)

    def start_chunked(self, headers: list[tuple[str, str]]) -> None:
        self._write(_status_line(200) + _headers([*headers, ("transfer-encoding", "chunked")]))

    def write_chunk(self, data: bytes) -> None:
        self._write(b"%x\r\n%b\r\n" % (len(data), data))

    def end_chunked(self) -> None:
        self._write(b"0\r\n\r\n")

    def drop(self, reset: bool = False) -> None:
        if self.transport is None or self.closed:
            return
        if reset:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                # SO_LINGER with a zero timeout makes close() send RST, not FIN.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
        else:
            self.transport.close()
        self.closed = True


def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %b\r\n" % (status, _REASONS.get(status, b"Status"))


def _headers(headers: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers) + b"\r\n"


async def serve_forever(
    host: str, port: int, defaults: Script, ready: Callable[[int], None]
) -> None:
    server = FakeUpstream(defaults)
    bound = await server.start(host, port)
    ready(bound)
    try:
        await asyncio.Event().wait()
    finally:
        await server.close()
