"""`X-Chatstream-Instance`: which instance served an answer, when several serve as one.

With `CHATSTREAM_REDIS_URL` any instance may serve any request (contract §6),
so an operator reading a client's report, or a test, needs to know which one
did. The value is the instance's id (`GET /readyz` → `instance`): kept in its
spool directory, so it stays the same across restarts of that instance (and
of that worker, with `serve --workers N`).

It goes on every HTTP answer and on every WebSocket handshake, once per
connection's answer, never per event.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatstream.api.deps import AppState

INSTANCE_HEADER = "X-Chatstream-Instance"
_HEADER_NAME = INSTANCE_HEADER.lower().encode()
_FIRST_MESSAGES = ("http.response.start", "websocket.accept")


class InstanceHeader:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: AppState | None = None
        if scope["type"] in ("http", "websocket"):
            state = scope.get("state", {}).get("chatstream")
        if state is None:
            await self.app(scope, receive, send)
            return
        header = (_HEADER_NAME, state.instance.encode())

        async def send_with_instance(message: Message) -> None:
            if message["type"] in _FIRST_MESSAGES:
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_instance)
