"""Secrets the whole suite uses, and the watch that proves none of them ever leaks.

Every test server's outgoing bytes (HTTP bodies, WebSocket frames) and every
log record of the session pass through `WATCH`; the session fails if any of
them ever carried one of these values.
"""

from __future__ import annotations

import logging
import threading
import time

import jwt
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SENTINEL_API_KEY = "sk-test-SENTINEL-0123456789abcdef"
SENTINEL_JWT_SECRET = "jwt-secret-SENTINEL-0123456789abcdefghijklmnopqrstuv"
SENTINEL_DB_PASSWORD = "db-password-SENTINEL-42"
# Shaped like a real bot token (digits, colon, 35 characters): it travels in Bot API URLs.
SENTINEL_TELEGRAM_TOKEN = "987654321:SENTINEL-telegram-token-0123456789ab"


def make_token(subject: str, secret: str = SENTINEL_JWT_SECRET, **claims: object) -> str:
    payload: dict[str, object] = {"sub": subject, "exp": int(time.time()) + 3600, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


TOKEN_ALICE = make_token("alice")
TOKEN_BOB = make_token("bob")

SENTINELS = (
    SENTINEL_API_KEY,
    SENTINEL_JWT_SECRET,
    SENTINEL_DB_PASSWORD,
    SENTINEL_TELEGRAM_TOKEN,
    TOKEN_ALICE,
    TOKEN_BOB,
)
_LONGEST = max(len(s) for s in SENTINELS)


class Watch:
    def __init__(self) -> None:
        self.violations: list[str] = []
        self._lock = threading.Lock()

    def check(self, text: str, where: str) -> None:
        for sentinel in SENTINELS:
            if sentinel in text:
                with self._lock:
                    self.violations.append(f"{where}: {sentinel[:12]}… in {text[:200]!r}")


WATCH = Watch()


class GuardedApp:
    """Passes everything through; scans what the app sends (split values included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tail = ""
        where = f"{scope['type']} {scope.get('path', '')}"

        async def watched_send(message: Message) -> None:
            nonlocal tail
            data = message.get("body") or message.get("bytes") or message.get("text") or b""
            text = data if isinstance(data, str) else bytes(data).decode("utf-8", "replace")
            if text:
                WATCH.check(tail + text, where)
                tail = text[-_LONGEST:]
            for name, value in message.get("headers", ()):
                WATCH.check(value.decode("latin-1"), f"{where} header {name!r}")
            await send(message)

        await self.app(scope, receive, watched_send)


class WatchingHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        WATCH.check(text, f"log {record.name}")
