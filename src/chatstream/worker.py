"""One worker of `chatstream serve --workers N`: a whole instance, on the parent's socket.

The supervisor (`chatstream.supervisor`) starts it in a fresh interpreter
(multiprocessing's spawn, as uvicorn's own supervisor does), with settings
that name its own spool directory and the shared metrics directory. It builds
its app with `create_app(settings)` and serves it with `ChatstreamServer`, so
that SIGTERM drains its runs before its connections, exactly as one process
does.

It tells the parent, over a one-way pipe, `Ready` (serving, as which
instance) or `Failed` (it could not start: the exit status and the one line
that says why), so that a worker that cannot start stops the server instead
of being restarted forever. Once serving, it sends a `Heartbeat` every
second from its event loop, so a worker whose loop is stuck (or that was
paused) is found and replaced. When the parent dies, it stops as on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import socket
import sys
import threading
from dataclasses import dataclass
from typing import NoReturn

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from chatstream.app import create_app
from chatstream.config import ConfigurationError, Settings
from chatstream.logs import configure_logging, secrets_of
from chatstream.server import ChatstreamServer, uvicorn_config
from chatstream.startup import explanation

logger = logging.getLogger(__name__)

HEARTBEAT_TICKS = 10  # uvicorn's ticks (0.1 s each) between heartbeats

# Exit statuses, as `chatstream serve` uses them (chatstream.cli).
CONFIGURATION_ERROR = 2
STARTUP_FAILED = 3


@dataclass(frozen=True, slots=True)
class Ready:
    """The worker serves, as this instance (`GET /readyz` → `instance`)."""

    instance: str


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The worker's event loop still turns (sent from uvicorn's tick, once a second)."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The worker could not start: its exit status and the one line that says why."""

    status: int
    reason: str


HEARTBEAT = Heartbeat()


def run_worker(
    settings: Settings,
    name: str,
    listener: socket.socket,
    report: multiprocessing.connection.Connection,
) -> None:
    """The worker process's whole life (the target of its `multiprocessing` process)."""
    configure_logging(settings.log_level, secrets_of(settings), process=name)
    # Ctrl-C from the terminal before the server took over the signals: no traceback.
    with contextlib.suppress(KeyboardInterrupt):
        _serve(settings, listener, report)


def _serve(
    settings: Settings, listener: socket.socket, report: multiprocessing.connection.Connection
) -> None:
    try:
        app = create_app(settings)
    except ConfigurationError as exc:
        _fail(report, Failed(CONFIGURATION_ERROR, str(exc)))
    watch = _StartupWatch(app)
    server = _WorkerServer(uvicorn_config(watch, settings), app, settings, report)
    threading.Thread(
        target=_stop_when_orphaned, args=(server,), daemon=True, name="parent-watch"
    ).start()
    try:
        server.run(sockets=[listener])
    except SystemExit:
        if not server.started:  # uvicorn exits so when the lifespan fails to start
            _fail(
                report,
                Failed(STARTUP_FAILED, watch.reason or "its start-up failed (its log says why)"),
            )
        raise


def _fail(report: multiprocessing.connection.Connection, failed: Failed) -> NoReturn:
    report.send(failed)
    sys.exit(failed.status)


class _WorkerServer(ChatstreamServer):
    def __init__(
        self,
        config: uvicorn.Config,
        app: FastAPI,
        settings: Settings,
        report: multiprocessing.connection.Connection,
    ) -> None:
        super().__init__(config, app, settings)
        self._report = report

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._report.send(Ready(self._app.state.chatstream.instance))

    async def on_tick(self, counter: int) -> bool:
        # uvicorn ticks every 0.1 s on the event loop: a beat a second says the loop turns.
        if counter % HEARTBEAT_TICKS == 0:
            self._beat()
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Draining (the runs' grace, then the connections') is not a hang, but uvicorn
        # no longer ticks: beat from here meanwhile.
        beating = asyncio.get_running_loop().create_task(self._beat_while_draining())
        try:
            await super().shutdown(sockets)
        finally:
            beating.cancel()

    async def _beat_while_draining(self) -> None:
        while True:
            self._beat()
            await asyncio.sleep(HEARTBEAT_TICKS * 0.1)

    def _beat(self) -> None:
        with contextlib.suppress(OSError):  # the parent is gone: the parent-watch stops us
            self._report.send(HEARTBEAT)


class _StartupWatch:
    """Outermost ASGI wrapper: keeps the one line that says why the lifespan did not start."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.reason: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            self.reason = explanation(exc)
            raise


def _stop_when_orphaned(server: uvicorn.Server) -> None:
    """The parent died (its end of the spawn pipe closed): stop, as on SIGTERM."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return
    multiprocessing.connection.wait([parent.sentinel])
    logger.warning("the supervisor process is gone: stopping")
    server.should_exit = True
