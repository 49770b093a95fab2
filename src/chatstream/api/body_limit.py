"""413 for a request body over `CHATSTREAM_MAX_BODY_BYTES`, before it is read whole.

A declared `Content-Length` over the limit is answered at once, without
reading a byte of the body; a body without one (chunked) is counted as it
streams in and refused the moment it passes the limit.

Why not FastAPI's `max_body_size`: Starlette's limiter behind it replaces
whatever response a request with an oversized `Content-Length` gets by a
plain-text 413, and sits outside every user middleware, so the contract's
JSON error shape could not be kept.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatstream.api.errors import error_response

TooLarge = Callable[[Scope, str], Response]


def payload_too_large(scope: Scope, message: str) -> Response:
    return error_response(413, "payload_too_large", message)


class BodyLimit:
    def __init__(
        self, app: ASGIApp, max_body_bytes: int, too_large: TooLarge = payload_too_large
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.message = (
            f"The request body is over the limit of {max_body_bytes} bytes "
            "(CHATSTREAM_MAX_BODY_BYTES)."
        )
        # The answer to a declared oversized body (a protocol adapter may speak its own errors).
        self.too_large = too_large

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > self.max_body_bytes:
                    await self.too_large(scope, self.message)(scope, receive, send)
                    return
                break

        limit = self.max_body_bytes
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTPException passes FastAPI's body reading untouched and
                    # reaches our handler, which renders the JSON 413.
                    raise HTTPException(413, self.message)
            return message

        await self.app(scope, counted_receive, send)
