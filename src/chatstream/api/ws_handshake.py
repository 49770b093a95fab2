"""Opening `WS /ws/chat`: who the caller is, and how an upgrade is refused.

The caller is named by the `Authorization` header or, for browsers (which
cannot set headers on a WebSocket), by a first `auth` frame within
`CHATSTREAM_WS_AUTH_TIMEOUT_S`; never by the URL, which ends up in logs.
"""

from __future__ import annotations

import anyio
from fastapi import WebSocket
from pydantic import ValidationError
from starlette.responses import JSONResponse

from chatstream.api.deps import State, principal_of
from chatstream.api.ws_frames import AuthFrame, client_frame
from chatstream.auth import Principal
from chatstream.errors import Unauthorized


async def authenticate(websocket: WebSocket, state: State) -> tuple[Principal, float | None] | None:
    """The caller and when its token expires, from the `Authorization` header or a first
    `auth` frame; None if neither holds.

    Never from the URL: URLs end up in logs.
    """
    header = websocket.headers.get("authorization")
    authenticator = state.authenticator
    try:
        if not authenticator.enabled or header is not None:
            return principal_of(state, websocket, header), authenticator.expiry_of(header)
        with anyio.fail_after(state.settings.ws_auth_timeout_s):
            message = await websocket.receive()
        text = message.get("text") if message["type"] == "websocket.receive" else None
        if text is None:
            return None
        frame = client_frame.validate_json(text)
        if not isinstance(frame, AuthFrame):
            return None
        owner = authenticator.owner_from_token(frame.token)
    except (Unauthorized, ValidationError, TimeoutError):
        return None
    return Principal(owner=owner, limit_key=f"owner:{owner}"), authenticator.expiry_of(frame.token)


async def deny(websocket: WebSocket, status: int, code: str, message: str) -> None:
    """Refuse the upgrade with an HTTP status (and a JSON body, when the server can send one)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        body = JSONResponse({"error": {"code": code, "message": message}}, status_code=status)
        await websocket.send_denial_response(body)
    else:
        await websocket.close(code=1008)
