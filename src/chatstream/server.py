"""How chatstream is served: the uvicorn configuration, in one place.

`chatstream serve` and the test servers both use it, so tests run with the
settings production runs with.
"""

from __future__ import annotations

from typing import Any

import uvicorn
from starlette.types import ASGIApp

from chatstream.config import Settings


def uvicorn_config(app: ASGIApp, settings: Settings, **overrides: Any) -> uvicorn.Config:
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,  # ours (chatstream.logs), configured by the caller
        "proxy_headers": False,  # client addresses are resolved by chatstream itself
        "server_header": False,
        "timeout_graceful_shutdown": int(settings.shutdown_grace_s) + 5,
        # A frame over the body limit is refused (close 1009) before it is buffered.
        "ws_max_size": settings.max_body_bytes,
        # Compressing every per-token frame costs more CPU than it saves in bytes.
        "ws_per_message_deflate": False,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
