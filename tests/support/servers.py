"""Real servers for tests: chatstream under uvicorn and the fake upstream, each in a thread.

Both listen on a free 127.0.0.1 port. Start-up and shut-down are awaited on
events the servers set themselves, never on sleeps.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import uvicorn
from fastapi import FastAPI

from chatstream.emulation.fake_server import FakeUpstream
from chatstream.server import uvicorn_config
from tests.support.sentinels import GuardedApp

START_TIMEOUT_S = 20.0


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class _Uvicorn(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)
        self.ready.set()


class AppServer:
    """A chatstream app served by real uvicorn in a background thread."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._sock = free_socket()
        self.port = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        settings = app.state.settings
        # Everything the app sends passes the sentinel watch.
        config = uvicorn_config(GuardedApp(app), settings, lifespan="on", log_level="warning")
        self._server = _Uvicorn(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            daemon=True,
            name="chatstream",
        )

    def start(self) -> AppServer:
        self._thread.start()
        if not self._server.ready.wait(START_TIMEOUT_S) or self._server.should_exit:
            self.stop()
            raise RuntimeError("chatstream did not start")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(START_TIMEOUT_S)
        self._sock.close()

    @property
    def state(self) -> Any:
        return self.app.state.chatstream

    def call(self, factory: Callable[[], Coroutine[Any, Any, Any]], timeout: float = 10.0) -> Any:
        """Run a coroutine on the server's own event loop (to inspect or poke its state)."""
        assert self._server.loop is not None
        return asyncio.run_coroutine_threadsafe(factory(), self._server.loop).result(timeout)

    def connections(self) -> list[Any]:
        """uvicorn's protocol object of each open connection (read on the server's loop)."""

        async def read() -> list[Any]:
            return list(self._server.server_state.connections)

        return list(self.call(read))


class FakeUpstreamThread:
    """The fake OpenAI-compatible upstream, served over real HTTP from its own loop."""

    def __init__(self) -> None:
        self.fake = FakeUpstream()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="fake-upstream")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeUpstreamThread:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise RuntimeError("fake upstream did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self.port = await self.fake.start()
        self._ready.set()
        await self._stop.wait()
        await self.fake.close()

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(START_TIMEOUT_S)
