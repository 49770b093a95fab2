"""Every call to a chat goes through its outbox: paced, 429-aware, finals never lost.

Telegram asks bots for at most about one message a second per chat and
answers 429 with `retry_after` beyond that. Per chat:

- every send (a message, an edit, a draft) starts at least `UPDATE_INTERVAL_S`
  after the previous one ended, and none while a 429's `retry_after` runs;
- an *update* (a draft or an edit showing the answer so far) is sent only
  if it is its turn now: otherwise, or if it fails, it is dropped, since the
  next one shows more anyway;
- a *final* send (a message that holds part of the answer, the last edit)
  waits for its turn and is retried through 429s, failed connections and
  Telegram's 5xx for up to `FINAL_DEADLINE_S`; if Telegram refuses its
  formatting, it is sent again without.
- chat actions ("typing") are best effort and not paced (Telegram shows one
  for five seconds), but are skipped while a 429 runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from chatstream.bots.telegram.api import (
    BotApi,
    TelegramError,
    TelegramRetryAfter,
    TelegramUnreachable,
)

logger = logging.getLogger(__name__)

UPDATE_INTERVAL_S = 1.0
FINAL_DEADLINE_S = 600.0
RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)
_FORGET_AFTER_S = 300.0  # an idle chat's pacing is forgotten after this long
_KEEP_CHATS = 1024


@dataclass(slots=True)
class _ChatPace:
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    last_sent: float = float("-inf")
    blocked_until: float = float("-inf")

    def ready_at(self) -> float:
        return max(self.last_sent + UPDATE_INTERVAL_S, self.blocked_until)


class Outbox:
    def __init__(self, api: BotApi, clock: Callable[[], float] = time.monotonic) -> None:
        self._api = api
        self._clock = clock
        self._chats: dict[int, _ChatPace] = {}

    def _pace(self, chat_id: int) -> _ChatPace:
        pace = self._chats.get(chat_id)
        if pace is None:
            if len(self._chats) >= _KEEP_CHATS:
                self._forget_idle()
            pace = self._chats[chat_id] = _ChatPace()
        return pace

    def _forget_idle(self) -> None:
        horizon = self._clock() - _FORGET_AFTER_S
        for chat_id, pace in list(self._chats.items()):
            if not pace.lock.locked() and max(pace.last_sent, pace.blocked_until) < horizon:
                del self._chats[chat_id]

    def wait_s(self, chat_id: int) -> float:
        """How long until an update to this chat would be sent (0: now)."""
        return max(0.0, self._pace(chat_id).ready_at() - self._clock())

    def _blocked(self, pace: _ChatPace, exc: TelegramRetryAfter, chat_id: int) -> None:
        pace.blocked_until = self._clock() + exc.retry_after
        logger.info("telegram: chat %s rate limited for %s s", chat_id, exc.retry_after)

    async def action(self, chat_id: int, action: str = "typing") -> None:
        pace = self._pace(chat_id)
        if self._clock() < pace.blocked_until:
            return
        try:
            await self._api.call("sendChatAction", {"chat_id": chat_id, "action": action})
        except TelegramRetryAfter as exc:
            self._blocked(pace, exc, chat_id)
        except (TelegramError, TelegramUnreachable) as exc:
            logger.info("telegram: chat action dropped (%s)", exc)

    async def update(self, chat_id: int, method: str, params: dict[str, Any]) -> Any:
        """Send now if it is this chat's turn; else, or on failure, drop it (None)."""
        pace = self._pace(chat_id)
        if pace.lock.locked() or self._clock() < pace.ready_at():
            return None
        async with pace.lock:
            try:
                return await self._api.call(method, params)
            except TelegramRetryAfter as exc:
                self._blocked(pace, exc, chat_id)
            except TelegramError as exc:
                if not exc.not_modified:
                    logger.info("telegram: %s dropped (%s)", method, exc)
            except TelegramUnreachable as exc:
                logger.info("telegram: update dropped (%s)", exc)
            finally:
                pace.last_sent = self._clock()
        return None

    async def final(self, chat_id: int, method: str, params: dict[str, Any]) -> Any:
        """Send, waiting for this chat's turn and retrying until it is delivered.

        Returns the method's result, or None if Telegram refused it for good
        (a 4xx other than 429: the chat is gone, the bot was blocked, …).
        """
        pace = self._pace(chat_id)
        deadline = self._clock() + FINAL_DEADLINE_S
        failures = 0
        async with pace.lock:
            while True:
                await anyio.sleep(max(0.0, pace.ready_at() - self._clock()))
                try:
                    return await self._api.call(method, params)
                except TelegramRetryAfter as exc:
                    self._blocked(pace, exc, chat_id)
                    problem: Exception = exc
                    waited = True
                except TelegramError as exc:
                    waited = False
                    if exc.not_modified:
                        return None
                    if exc.bad_entities and "entities" in params:
                        logger.info("telegram: formatting refused, sending plain text")
                        params = {k: v for k, v in params.items() if k != "entities"}
                        continue
                    if exc.status < 500:
                        logger.error("telegram: %s to chat %s refused (%s)", method, chat_id, exc)
                        return None
                    problem = exc
                except TelegramUnreachable as exc:
                    problem, waited = exc, False
                finally:
                    pace.last_sent = self._clock()
                if self._clock() >= deadline:
                    logger.error("telegram: %s to chat %s given up (%s)", method, chat_id, problem)
                    return None
                if waited:
                    continue  # the 429 said how long
                backoff = RETRY_BACKOFF_S[min(failures, len(RETRY_BACKOFF_S) - 1)]
                failures += 1
                logger.warning("telegram: %s failed (%s); again in %s s", method, problem, backoff)
                pace.blocked_until = max(pace.blocked_until, self._clock() + backoff)
