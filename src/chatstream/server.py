"""How chatstream is served: uvicorn's configuration and shutdown, in one place.

`chatstream serve` and the test servers both use `uvicorn_config`, so tests
run with the settings production runs with.

Shutdown (SIGTERM), as `ChatstreamServer` orders it:

1. runs first: no new run starts (503 / a `server_shutdown` frame,
   `/readyz` says `shutting_down`); live runs get `CHATSTREAM_SHUTDOWN_GRACE_S`
   to finish; the rest end with `server_shutdown` and `done`/`interrupted`,
   their partial answers persisted, while their clients are still connected;
2. then uvicorn's own drain, which by now only has final events to flush
   (hence its short timeout), and WebSockets are closed with 1012;
3. then the lifespan closes everything else.

Plain uvicorn would drain connections first, and SSE connections last as
long as their runs: clients would be cut off before their `done`.
"""

from __future__ import annotations

import socket
from typing import Any

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp

from chatstream.config import Settings

CONNECTION_DRAIN_S = 1


def uvicorn_config(app: ASGIApp, settings: Settings, **overrides: Any) -> uvicorn.Config:
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,  # ours (chatstream.logs), configured by the caller
        "proxy_headers": False,  # client addresses are resolved by chatstream itself
        "server_header": False,
        # Runs are drained before this (see ChatstreamServer): only flushing is left.
        "timeout_graceful_shutdown": CONNECTION_DRAIN_S,
        # A frame over the body limit is refused (close 1009) before it is buffered.
        "ws_max_size": settings.max_body_bytes,
        # Compressing every per-token frame costs more CPU than it saves in bytes.
        "ws_per_message_deflate": False,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


class ChatstreamServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, settings: Settings) -> None:
        super().__init__(config)
        self._app = app
        self._grace_s = settings.shutdown_grace_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state = getattr(self._app.state, "chatstream", None)
        if state is not None:
            await state.registry.shutdown(self._grace_s)
        await super().shutdown(sockets)
