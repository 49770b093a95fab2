"""One run shown in one Telegram chat: a follower of the run's events, like an SSE response.

    run events ──▶ read ──▶ text so far, waiting?, the end ──▶ send loop ──▶ Outbox
                                      └────────────────────▶ typing loop ─┘

The reader never waits on Telegram: it folds events into the state, and the
send loop shows the newest state when the chat's outbox allows (an update at
most once a second; what could not be shown meanwhile is simply shown later,
as part of more text). Modes:

- `draft`: the text so far in a message draft (`sendMessageDraft`, with
  Telegram's stop button), then the answer as messages; while the model
  reasons before its text, the draft shows the end of that reasoning
  (`💭 …`), which never becomes part of a message;
- `edit`: one message edited as the text grows, which becomes the answer's
  (first, or next) message;
- `chunks`: a new message for every `CHATSTREAM_TELEGRAM_CHUNK_CHARS`
  characters, cut at whitespace.

However it streams, the answer ends as messages of at most 4096 characters
which, joined as `split.py` defines, are exactly the text the run streamed
(for a run without tools, the persisted answer). Messages are cut as soon as
the text is longer than one (so a long answer is delivered as it streams),
at the cuts the whole answer would have. A run that did not complete also
gets a short notice (stopped, or the error's message). "typing" is shown
while no text has come, and again while tools run.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import anyio

from chatstream.bots.telegram.outbox import Outbox
from chatstream.bots.telegram.split import MESSAGE_LIMIT, code_entities, next_piece, pieces
from chatstream.runs.events import Event
from chatstream.runs.handle import RunHandle

logger = logging.getLogger(__name__)

TYPING_INTERVAL_S = 4.0  # Telegram shows "typing" for about five seconds
TYPING_MIN_GAP_S = 1.0

Mode = Literal["draft", "edit", "chunks"]

STOPPED_NOTICE = "⏹ Stopped."
THINKING_MARK = "💭 "
THINKING_SHOWN_CHARS = 600  # the end of the reasoning a draft shows: what it is thinking now


def draft_id_for(run: RunHandle) -> int:
    """A non-zero draft id of the run's own (32-bit, as Telegram's clients expect)."""
    return run.id.int % (2**31 - 1) + 1


class Delivery:
    def __init__(
        self,
        run: RunHandle,
        chat_id: int,
        outbox: Outbox,
        *,
        mode: Mode,
        chunk_chars: int,
        reply_to: int | None = None,
    ) -> None:
        self.run = run
        self.chat_id = chat_id
        self.draft_id = draft_id_for(run)
        self._outbox = outbox
        self._mode = mode
        self._limit = chunk_chars if mode == "chunks" else MESSAGE_LIMIT
        self._reply_to = reply_to
        # What the run has said so far.
        self._text = ""
        self._reasoning = ""  # shown in a draft while no text has come, never sent
        self._waiting = True  # no text yet in this round (or tools running)
        self._ended = False
        self._status: str | None = None
        self._error: str | None = None
        # What the chat has been shown.
        self._committed = 0  # text before this is in final messages
        self._shown = ""  # the last update's text
        self._message_id: int | None = None  # edit mode: the message being edited
        self._wake = anyio.Event()
        self._typing_wake = anyio.Event()
        self._last_typing = -math.inf

    async def deliver(self) -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._typing)
            tasks.start_soon(self._read)
            await self._send_loop()
            tasks.cancel_scope.cancel()

    # --- reading the run ---------------------------------------------------------------

    async def _read(self) -> None:
        try:
            async with self.run.follow(0) as batches:
                async for batch in batches:
                    for event in batch:
                        self._apply(event)
                    self._wake.set()
        finally:
            self._ended = True
            self._wake.set()

    def _apply(self, event: Event) -> None:
        data: Any = event.data
        kind = event.type
        if kind == "delta":
            self._text += data["text"]
            self._waiting = False
        elif kind == "reasoning":
            self._reasoning = (self._reasoning + data["text"])[-THINKING_SHOWN_CHARS:]
            self._waiting = False  # the draft shows it: no "typing" meanwhile
        elif kind == "tool_call":
            if not self._waiting:
                self._waiting = True
                self._typing_wake.set()
        elif kind == "error":
            self._error = data["message"]
        elif kind == "done":
            self._status = data["status"]

    # --- typing ---------------------------------------------------------------------------

    async def _typing(self) -> None:
        while not self._ended:
            if self._waiting:
                now = anyio.current_time()
                if now - self._last_typing >= TYPING_MIN_GAP_S:
                    self._last_typing = now
                    await self._outbox.action(self.chat_id, "typing")
            self._typing_wake = anyio.Event()
            with anyio.move_on_after(TYPING_INTERVAL_S):
                await self._typing_wake.wait()

    # --- sending ----------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        while True:
            self._wake = anyio.Event()
            await self._commit_full_pieces()
            if self._ended:
                await self._finish()
                return
            if self._mode == "chunks":
                await self._wake.wait()
                continue
            pending = self._pending_text()
            if not pending or pending == self._shown:
                await self._wake.wait()
                continue
            wait_s = self._outbox.wait_s(self.chat_id)
            if wait_s > 0:
                with anyio.move_on_after(wait_s):
                    await self._wake.wait()
                continue
            await self._show(pending)

    def _pending_text(self) -> str:
        text = self._text[self._committed :].strip()
        if not text and self._mode == "draft" and self._reasoning.strip():
            return THINKING_MARK + "…" + self._reasoning.strip()
        return text

    async def _show(self, text: str) -> None:
        """One update: the draft, or the edited message, shows `text`."""
        chat_id = self.chat_id
        if self._mode == "draft":
            sent = await self._outbox.update(
                chat_id,
                "sendMessageDraft",
                {"chat_id": chat_id, "draft_id": self.draft_id, "text": text, "can_stop": True},
            )
        elif self._message_id is None:
            sent = await self._outbox.update(chat_id, "sendMessage", self._message(text))
            if isinstance(sent, dict) and isinstance(sent.get("message_id"), int):
                self._message_id = sent["message_id"]
        else:
            sent = await self._outbox.update(
                chat_id,
                "editMessageText",
                {"chat_id": chat_id, "message_id": self._message_id, "text": text},
            )
        if sent is not None:
            self._shown = text

    async def _commit_full_pieces(self) -> None:
        """Send as final messages the pieces that can no longer change."""
        while (
            span := next_piece(self._text, self._committed, self._limit, final=False)
        ) is not None:
            await self._send_piece(self._text[span[0] : span[1]])
            self._committed = span[1]

    async def _finish(self) -> None:
        rest = self._text[self._committed :]
        for start, end in pieces(rest, self._limit):
            await self._send_piece(rest[start:end])
        self._committed = len(self._text)
        if self._message_id is not None:
            # Edit mode, the run ended before its text did: nothing left to show there.
            self._message_id = None
        notice = self._notice()
        if notice:
            await self._outbox.final(self.chat_id, "sendMessage", self._message(notice, False))

    async def _send_piece(self, piece: str) -> None:
        chat_id = self.chat_id
        if self._message_id is not None:
            params: dict[str, Any] = {"chat_id": chat_id, "message_id": self._message_id}
            params.update(self._formatted(piece))
            await self._outbox.final(chat_id, "editMessageText", params)
            self._message_id = None
        else:
            await self._outbox.final(chat_id, "sendMessage", self._message(piece))
        self._shown = ""

    def _message(self, text: str, formatted: bool = True) -> dict[str, Any]:
        params: dict[str, Any] = {"chat_id": self.chat_id}
        params.update(self._formatted(text) if formatted else {"text": text})
        if self._reply_to is not None:
            # Only the first message answers the user's; the rest follow it.
            params["reply_parameters"] = {
                "message_id": self._reply_to,
                "allow_sending_without_reply": True,
            }
            self._reply_to = None
        return params

    @staticmethod
    def _formatted(text: str) -> dict[str, Any]:
        entities = code_entities(text)
        return {"text": text, "entities": entities} if entities else {"text": text}

    def _notice(self) -> str | None:
        if self._status == "cancelled":
            return STOPPED_NOTICE
        if self._status in ("error", "interrupted") or (self._status is None and self._error):
            return f"⚠️ {self._error or 'The answer was interrupted.'}"
        if self._status == "complete" and not self._text.strip():
            return "(The model gave an empty answer.)"
        if self._status is None:
            return "⚠️ The answer was lost on its way; send your message again."
        return None
