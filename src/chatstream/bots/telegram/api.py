"""A thin Bot API client over httpx2 (the HTTP stack the model client already uses).

    api = BotApi(token, base_url)           # async with: one connection pool
    await api.call("sendMessage", {...})    # the method's `result`, or:

    TelegramError                 Telegram answered `ok: false`: status, description
    ├── TelegramRetryAfter        429 with `parameters.retry_after` (seconds to wait)
    TelegramUnreachable           no answer: connection failed, timed out, or not JSON

Why not a framework: chatstream needs six methods and the webhook's JSON,
not a dispatcher, and aiogram 3 (the well-kept async one, which follows the
Bot API's drafts) pins pydantic below the version chatstream requires.

The bot token is part of every method's URL, so neither URLs nor the HTTP
library's exception texts (which may hold one) are ever logged or raised,
and httpx2's own request log line has the token taken out while a client is
open.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

import httpx2
import orjson

CALL_TIMEOUT_S = 15.0
HIDDEN = "<bot token>"


class _HideToken(logging.Filter):
    """Takes the token out of httpx2's "HTTP Request: POST <url> …" records."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._token = token

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(self._token in str(arg) for arg in record.args):
            record.args = tuple(
                str(arg).replace(self._token, HIDDEN) if self._token in str(arg) else arg
                for arg in record.args
            )
        return True


class TelegramError(Exception):
    def __init__(self, status: int, description: str) -> None:
        self.status = status
        self.description = description
        super().__init__(f"{status}: {description}")

    @property
    def not_modified(self) -> bool:
        """An edit that would change nothing: harmless."""
        return self.status == 400 and "message is not modified" in self.description

    @property
    def bad_entities(self) -> bool:
        """Telegram refused the formatting; the same text without it will do."""
        text = self.description.lower()
        return self.status == 400 and ("entit" in text or "can't parse" in text)


class TelegramRetryAfter(TelegramError):
    def __init__(self, status: int, description: str, retry_after: float) -> None:
        super().__init__(status, description)
        self.retry_after = retry_after


class TelegramUnreachable(Exception):
    """No usable answer from the Bot API (the send may or may not have happened)."""


class BotApi:
    def __init__(self, token: str, base_url: str, *, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self._url = f"{base_url.rstrip('/')}/bot{token}/"
        self._timeout_s = timeout_s
        self._client: httpx2.AsyncClient | None = None
        self._hide = _HideToken(token)

    async def __aenter__(self) -> BotApi:
        logging.getLogger("httpx2").addFilter(self._hide)
        self._client = httpx2.AsyncClient(
            base_url=self._url,
            timeout=httpx2.Timeout(self._timeout_s),
            headers={"Content-Type": "application/json"},
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
            logging.getLogger("httpx2").removeFilter(self._hide)

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        assert self._client is not None, "BotApi used outside `async with`"
        try:
            response = await self._client.post(method, content=orjson.dumps(params))
        except httpx2.HTTPError as exc:
            raise TelegramUnreachable(f"{method}: {type(exc).__name__}") from None
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise TelegramUnreachable(f"{method}: HTTP {response.status_code}, not JSON") from None
        if not isinstance(body, dict):
            raise TelegramUnreachable(f"{method}: HTTP {response.status_code}, not an object")
        if body.get("ok") is True:
            return body.get("result")
        status = int(body.get("error_code") or response.status_code)
        description = str(body.get("description") or "")
        retry_after = (body.get("parameters") or {}).get("retry_after")
        if status == 429 and isinstance(retry_after, int | float):
            raise TelegramRetryAfter(status, description, float(retry_after))
        raise TelegramError(status, description)
