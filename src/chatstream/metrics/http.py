"""HTTP request counts and durations, by method, route template and status.

A pure ASGI middleware (no `BaseHTTPMiddleware`, which breaks streaming and
cancellation). The route is the template the router matched
(`/api/runs/{message_id}/events`), read from the scope once the request is
answered, never the raw path: ids in paths would make a series per id.
Requests no route matched count under one label, `unmatched`.

A stream is one request: it is counted once, when it ends, and its duration
is the stream's. The wrapped `send` adds one plain function call per message
sent (no coroutine of its own), and nothing else per token.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatstream.metrics.collectors import ChatstreamCollectors, http_method_label

UNMATCHED = "unmatched"
# The answer nobody received: the client left before the response started.
CLIENT_CLOSED = "499"


class HttpMetrics:
    def __init__(self, app: ASGIApp, collectors: ChatstreamCollectors) -> None:
        self.app = app
        self._requests = collectors.http_requests
        self._duration = collectors.http_duration
        # (method, route, status) → its two series; as bounded as the labels.
        self._series: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: str | None = None

        def send_and_note_status(message: Message) -> Awaitable[None]:
            nonlocal status
            if status is None and message["type"] == "http.response.start":
                status = str(message["status"])
            return send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        except Exception:
            status = status or "500"  # what the server error handler answers
            raise
        except BaseException:
            status = status or CLIENT_CLOSED  # cancelled: the client is gone
            raise
        finally:
            elapsed = time.perf_counter() - started
            key = (http_method_label(scope["method"]), route_template(scope), status or "500")
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = (
                    self._requests.labels(*key),
                    self._duration.labels(key[0], key[1]),
                )
            series[0].inc()
            series[1].observe(elapsed)


def route_template(scope: Scope) -> str:
    """The path template of the route that handled the request, or `unmatched`."""
    route = scope.get("route")
    if route is None:
        return UNMATCHED
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) and template else UNMATCHED
