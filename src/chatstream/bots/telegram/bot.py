"""The Telegram bot: updates in, runs started, deliveries followed, all on one task group.

    webhook ─ take(update) ─▶ (task group) handle ─┬─ /new, /stop, /start, the stop button
              answers within ACK_WITHIN_S          └─ a message: ChatService.start → Delivery

Each Telegram chat is one conversation owned by `telegram:<chat id>` (an
owner no bearer token can name; see `chatstream.owners`): its current
session is the owner's newest one, and `/new` starts a newer one.
The update's `update_id` is the chat's `client_message_id`, so a retried
update (Telegram retries webhooks it got no answer to) starts no second run,
in this process or any other; a repeat this process is still handling is
dropped at once.

`TelegramBot` is entered in the app's lifespan before the run registry, so it
outlives it: on shutdown the registry ends the live runs, and the deliveries
still send what those runs produced before the bot closes.
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup

from chatstream.auth import Principal
from chatstream.bots.telegram.api import BotApi
from chatstream.bots.telegram.delivery import Delivery
from chatstream.bots.telegram.outbox import Outbox
from chatstream.config import Settings
from chatstream.errors import (
    ChatstreamError,
    InvalidChat,
    RateLimited,
    ServerShutdown,
    ServiceUnavailable,
)
from chatstream.owners import telegram_owner
from chatstream.runs.handle import RunRegistry
from chatstream.runs.service import NO_TEXT, ChatInput, ChatStarter
from chatstream.storage.repository import Store

logger = logging.getLogger(__name__)

ACK_WITHIN_S = 0.5  # the webhook answers by then, whatever the run is doing
DRAIN_S = 15.0  # on shutdown, deliveries get this long to send what their runs produced
_SEEN_UPDATES = 4096

HELP = (
    "Send me a message and I answer it as I write.\n"
    "/new starts a new conversation; /stop stops the answer being written."
)


class TelegramBot:
    def __init__(self, settings: Settings) -> None:
        assert settings.telegram_bot_token is not None
        self._settings = settings
        self._api = BotApi(
            settings.telegram_bot_token.get_secret_value(), settings.telegram_api_base
        )
        self.outbox = Outbox(self._api)
        self._tasks: TaskGroup | None = None
        self._chat: ChatStarter | None = None
        self._store: Store | None = None
        self._registry: RunRegistry | None = None
        self._seen: OrderedDict[int, None] = OrderedDict()  # update ids being handled or handled
        self._chat_locks: dict[int, anyio.Lock] = {}
        self._deliveries: dict[uuid.UUID, Delivery] = {}  # by run id
        self._drained: anyio.Event | None = None  # set when the last delivery ends (shutdown)

    # --- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> TelegramBot:
        await self._api.__aenter__()
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tasks, self._tasks = self._tasks, None
        assert tasks is not None
        try:
            if self._deliveries:
                self._drained = anyio.Event()
                with anyio.move_on_after(DRAIN_S):
                    await self._drained.wait()
            if self._deliveries:
                logger.warning(
                    "telegram: %d deliveries cut short at shutdown", len(self._deliveries)
                )
            tasks.cancel_scope.cancel()
            await tasks.__aexit__(exc_type, exc, tb)
        finally:
            await self._api.aclose()

    def serve(self, chat: ChatStarter, store: Store, registry: RunRegistry) -> None:
        """Start taking updates, now that the chat service exists."""
        self._chat = chat
        self._store = store
        self._registry = registry

    # --- updates -------------------------------------------------------------------

    async def take(self, update: dict[str, Any]) -> None:
        """Handle an update; return once it is under way (or ACK_WITHIN_S has passed).

        Raises `ServiceUnavailable` if the update could not be taken and
        Telegram should send it again (the chat service is not up, the
        database is unreachable).
        """
        if self._tasks is None or self._chat is None:
            raise ServiceUnavailable("The bot is not ready; Telegram will retry.")
        update_id = update.get("update_id")
        if not isinstance(update_id, int):
            return
        if update_id in self._seen:
            return  # a retry of an update this process already has
        self._seen[update_id] = None
        while len(self._seen) > _SEEN_UPDATES:
            self._seen.popitem(last=False)
        outcome: list[BaseException] = []
        taken = anyio.Event()
        self._tasks.start_soon(self._handle, update, taken, outcome, name=f"telegram {update_id}")
        with anyio.move_on_after(ACK_WITHIN_S):
            await taken.wait()
        if outcome:
            self._seen.pop(update_id, None)  # let Telegram's retry in
            raise ServiceUnavailable("The update could not be taken now; Telegram will retry.")

    async def _handle(
        self, update: dict[str, Any], taken: anyio.Event, outcome: list[BaseException]
    ) -> None:
        try:
            await self._dispatch(update, taken)
        except (ServiceUnavailable, ServerShutdown) as exc:
            if not taken.is_set():
                outcome.append(exc)
                return
            # Too late to have Telegram send it again: tell the user instead.
            logger.warning("telegram: update %s not taken (%s)", update.get("update_id"), exc.code)
            chat_id = _chat_id(update.get("message"))
            if chat_id is not None:
                await self._say(chat_id, "⚠️ I could not take that message; please send it again.")
        except Exception as exc:
            logger.error(
                "telegram: update %s failed (%s: %s)",
                update.get("update_id"),
                type(exc).__name__,
                exc,
            )
        finally:
            taken.set()

    async def _dispatch(self, update: dict[str, Any], taken: anyio.Event) -> None:
        stopped = update.get("stopped_message_generation")
        if isinstance(stopped, dict):
            await self._stop_draft(stopped)
            return
        message = update.get("message")
        chat_id = _chat_id(message)
        if chat_id is None or not isinstance(message, dict):
            return  # edits, channel posts, callbacks…: not for this bot
        text = message.get("text")
        if not isinstance(text, str):
            taken.set()
            await self._say(chat_id, "I can only read text messages.")
            return
        command = text.split(maxsplit=1)[0].split("@", 1)[0].lower() if text.startswith("/") else ""
        if command in ("/start", "/help"):
            taken.set()
            await self._say(chat_id, HELP)
        elif command == "/new":
            assert self._store is not None
            await self._store.create_session(
                telegram_owner(chat_id), title=None, model=None, system_prompt=None
            )
            taken.set()
            await self._say(chat_id, "Started a new conversation.")
        elif command == "/stop":
            taken.set()
            if not await self._stop_chat(chat_id):
                await self._say(chat_id, "Nothing to stop.")
        else:
            await self._answer(update["update_id"], chat_id, message, text, taken)

    async def _answer(
        self, update_id: int, chat_id: int, message: dict[str, Any], text: str, taken: anyio.Event
    ) -> None:
        assert self._chat is not None and self._store is not None
        owner = telegram_owner(chat_id)
        lock = self._chat_locks.setdefault(chat_id, anyio.Lock())
        try:
            # One at a time per chat, so that two first messages make one session.
            async with lock:
                page = await self._store.list_sessions(owner, limit=1, cursor=None)
                request = ChatInput(
                    message=text,
                    session_id=page.items[0].id if page.items else None,
                    client_message_id=f"telegram:{update_id}",
                )
                started = await self._chat.start(Principal(owner, owner), request)
        except InvalidChat as exc:
            taken.set()
            empty = any(problem.message == NO_TEXT for problem in exc.problems)
            await self._say(
                chat_id, "That message is empty to me; send some text." if empty else exc.message
            )
            return
        except RateLimited as exc:
            taken.set()
            wait = f" Try again in {max(1, round(exc.retry_after))} s." if exc.retry_after else ""
            await self._say(chat_id, f"⚠️ {exc.message}{wait}")
            return
        except (ServiceUnavailable, ServerShutdown):
            raise  # Telegram sends the update again later
        except ChatstreamError as exc:
            taken.set()
            await self._say(chat_id, f"⚠️ {exc.message}")
            return
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._chat_locks.pop(chat_id, None)
        taken.set()
        run = started.run
        if run.id in self._deliveries:
            return  # this run is already being shown here
        reply_to = message.get("message_id") if isinstance(message.get("message_id"), int) else None
        delivery = Delivery(
            run,
            chat_id,
            self.outbox,
            mode=self._settings.telegram_mode,
            chunk_chars=self._settings.telegram_chunk_chars,
            reply_to=reply_to,
        )
        self._deliveries[run.id] = delivery
        try:
            await delivery.deliver()
        finally:
            del self._deliveries[run.id]
            if not self._deliveries and self._drained is not None:
                self._drained.set()

    async def _stop_chat(self, chat_id: int) -> bool:
        """Cancel the chat's live runs, on whichever instance they are generated."""
        assert self._store is not None and self._registry is not None
        owner = telegram_owner(chat_id)
        page = await self._store.list_sessions(owner, limit=1, cursor=None)
        if not page.items:
            return False
        stopped = False
        for run in await self._registry.live_in_session(page.items[0].id, owner):
            stopped = await run.cancel() or stopped
        return stopped

    async def _stop_draft(self, stopped: dict[str, Any]) -> None:
        """The user pressed the draft's stop button: cancel that run."""
        chat = stopped.get("chat")
        chat_id = chat.get("id") if isinstance(chat, dict) else None
        for delivery in list(self._deliveries.values()):
            if delivery.chat_id == chat_id and delivery.draft_id == stopped.get("draft_id"):
                await delivery.run.cancel()

    async def _say(self, chat_id: int, text: str) -> None:
        await self.outbox.final(chat_id, "sendMessage", {"chat_id": chat_id, "text": text})


def _chat_id(message: object) -> int | None:
    chat = message.get("chat") if isinstance(message, dict) else None
    chat_id = chat.get("id") if isinstance(chat, dict) else None
    return chat_id if isinstance(chat_id, int) else None
