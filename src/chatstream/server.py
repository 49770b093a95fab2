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

from chatstream.api.ws_transport import websocket_protocol
from chatstream.config import Settings
from chatstream.logs import configure_logging, secrets_of

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
        # A bounded write buffer, and a close that drops a client that does not read.
        "ws": websocket_protocol(settings),
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
            state.chat.live.events.close()  # sessions' watchers: their streams end now
        await super().shutdown(sockets)


def serve(app: FastAPI, settings: Settings | None = None) -> int:
    """Serve an app from `create_app` as `chatstream serve` does; return the exit status.

    For applications that build their own app (custom tools, extra routes):
    the same logging, uvicorn settings and shutdown order (runs drained
    before connections). 0 after a clean shutdown; a start-up that fails (the
    reason is the one line logged before) exits with status 3, uvicorn's.
    """
    settings = settings or app.state.settings
    configure_logging(settings.log_level, secrets_of(settings))
    server = ChatstreamServer(uvicorn_config(app, settings), app, settings)
    server.run()
    return 0
