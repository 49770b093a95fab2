"""Logging: one line per record, a request id on each, nothing secret, no tracebacks.

The request id comes from a well-formed `X-Request-ID` header or is made up,
is echoed on the response, and rides a contextvar into every log record
(runs started by a request inherit it).

The formatter is the last line of defence for secrets: it removes the values
of the configured secrets (API key, JWT secret, database and Redis
passwords) and anything shaped like a bearer token, a JWT or an API key,
whoever logged it (uvicorn logs request URLs, libraries log what they like).
It is also the last line of defence for what people wrote: a database
error's text can carry the values of its statement (SQLAlchemy's
`[parameters: …]`, which the engines already hide, and PostgreSQL's
`DETAIL:  Failing row contains (…)`); those are cut from every line,
tracebacks included.
An exception is one line, its type and message: an expected failure (an
outage, a refused request) needs no stack trace. The exception is a fault,
a bug in chatstream or a plugin, logged with `log_fault`: that record carries
its traceback (redacted like the rest, on one line joined by " | "), since
without it nobody can fix the bug.
"""

from __future__ import annotations

import logging
import re
import traceback
import uuid
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatstream.config import Settings

request_id: ContextVar[str] = ContextVar("request_id", default="-")

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


_PATTERNS = (
    re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+"),
    re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),  # JWT
    re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"),  # OpenAI-style API key
    re.compile(r"(?<=://)[^/\s:@]*:[^/\s@]+(?=@)"),  # user:password in a URL
    re.compile(r"\d{5,}:[A-Za-z0-9_-]{30,}"),  # Telegram bot token (also in Bot API URLs)
)
REDACTED = "[redacted]"

# A database error's values, to the end of their line (in an exception's
# repr, where a value's newlines are escapes, the rest of the line goes too):
# (pattern, what stands in their place).
_DATABASE_VALUES = (
    (re.compile(r"\[parameters: [^\n]*"), "[parameters hidden]"),
    (re.compile(r"\bDETAIL:  [^\n]*"), "DETAIL:  [hidden]"),
)


def without_database_values(text: str) -> str:
    """`text` without the statement parameters and row details a database error carries."""
    if "[parameters: " not in text and "DETAIL:  " not in text:
        return text
    for pattern, replacement in _DATABASE_VALUES:
        text = pattern.sub(replacement, text)
    return text


class Redactor:
    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        # Longest first, so a secret that contains another is removed whole.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        for pattern in _PATTERNS:
            text = pattern.sub(
                lambda m: m.group(1) + " " + REDACTED if m.lastindex else REDACTED, text
            )
        return text


def secrets_of(settings: Settings) -> list[str | None]:
    """The values in settings that must never be logged."""
    values: list[str | None] = []
    for secret in (
        settings.openai_api_key,
        settings.jwt_secret,
        settings.telegram_bot_token,
        settings.telegram_webhook_secret,
    ):
        values.append(secret.get_secret_value() if secret is not None else None)
    for url in (
        settings.database_url,
        settings.redis_url,
        settings.rate_limit_storage,
        settings.cache_storage,
    ):
        values.append(urlsplit(url).password if url else None)
    return values


FAULT = "chatstream_fault"


def log_fault(logger: logging.Logger, message: str, *args: object) -> None:
    """Log the exception being handled as a fault (a bug): at ERROR, with its traceback."""
    logger.error(message, *args, exc_info=True, extra={FAULT: True}, stacklevel=2)


class SafeFormatter(logging.Formatter):
    """One line per record; secrets redacted; exceptions as their type and message,
    and faults (`log_fault`) with their traceback."""

    def __init__(self, fmt: str, redactor: Redactor) -> None:
        super().__init__(fmt)
        self._redact = redactor
        self._with_traceback = False

    def formatException(self, ei: Any) -> str:
        exc = ei[1]
        if exc is None:
            return ""
        if self._with_traceback:
            return "".join(traceback.format_exception(exc)).rstrip()
        return f"{type(exc).__name__}: {exc}"

    def formatStack(self, stack_info: str) -> str:
        return ""

    def format(self, record: logging.LogRecord) -> str:
        # Formatters cache the exception text on the record; ours depends on the record.
        self._with_traceback = bool(getattr(record, FAULT, False))
        cached, record.exc_text = record.exc_text, None
        try:
            text = super().format(record)
        finally:
            record.exc_text = cached
        text = without_database_values(self._redact(text))
        return text.replace("\r", " ").replace("\n", " | ")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def configure_logging(
    level: str, secrets: Iterable[str | None] = (), *, process: str | None = None
) -> None:
    """`process` names this process on every line (`worker-2`), when several serve as one."""
    handler = logging.StreamHandler()
    fmt = LOG_FORMAT if process is None else LOG_FORMAT.replace("%(name)s", f"{process} %(name)s")
    handler.setFormatter(SafeFormatter(fmt, Redactor(secrets)))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # One line per upstream request is noise at INFO; errors surface as run errors.
    for noisy in ("httpx2", "httpcore2", "openai"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        rid = incoming if _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = request_id.set(rid)
        header = (b"x-request-id", rid.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
