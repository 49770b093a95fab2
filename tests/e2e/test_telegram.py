"""Telegram (contract section 10): the real app, a fake Bot API over real HTTP, the fake model."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fake_telegram import NOT_MODIFIED, Call, FakeTelegram, utf16_len
from tests.support.process import clean_env
from tests.support.sentinels import SENTINEL_TELEGRAM_TOKEN, WATCH
from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.wait import wait_until

SECRET = "webhook-secret_0123456789"
CHAT = 4242
STOPPED = "⏹ Stopped."
_update_ids = itertools.count(1)
_message_ids = itertools.count(1)


def message_update(text: str, chat_id: int = CHAT, update_id: int | None = None) -> dict[str, Any]:
    return {
        "update_id": update_id if update_id is not None else next(_update_ids),
        "message": {
            "message_id": next(_message_ids),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private"},
            "from": {"id": chat_id, "is_bot": False, "first_name": "Test"},
            "text": text,
        },
    }


class Bot:
    """The app with Telegram on, and what its chats look like."""

    def __init__(self, server: AppServer, telegram: FakeTelegram) -> None:
        self.server = server
        self.telegram = telegram
        self.http = httpx.Client(base_url=server.base_url, timeout=10)

    def post(self, update: dict[str, Any], secret: str | None = SECRET) -> httpx.Response:
        # The webhook never waits for the model: test_the_webhook_answers_before_the_model
        # shows it by what happened, not by a clock on a shared machine.
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
        return self.http.post("/telegram/webhook", json=update, headers=headers)

    def say(self, text: str, chat_id: int = CHAT) -> dict[str, Any]:
        update = message_update(text, chat_id)
        assert self.post(update).status_code == 200
        return update

    def sessions(self, chat_id: int = CHAT) -> list[Any]:
        store = self.server.state.store
        page = self.server.call(
            lambda: store.list_sessions(f"telegram:{chat_id}", limit=50, cursor=None)
        )
        return list(page.items)

    def messages(self, session_id: uuid.UUID, chat_id: int = CHAT) -> list[Any]:
        store = self.server.state.store
        page = self.server.call(
            lambda: store.list_messages(f"telegram:{chat_id}", session_id, limit=200, before=None)
        )
        return list(page.items)

    def answer(self, chat_id: int = CHAT, count: int = 1) -> Any:
        """The newest session's last answer, once `count` answers are persisted in it."""

        def persisted() -> Any:
            sessions = self.sessions(chat_id)
            if not sessions:
                return None
            answers = [m for m in self.messages(sessions[0].id, chat_id) if m.role == "assistant"]
            return answers[-1] if len(answers) >= count else None

        return wait_until(persisted, timeout=20, what="the answer is persisted")

    def delivered(self, content: str, chat_id: int = CHAT) -> list[str]:
        """Wait until the chat's messages (notices aside) join into `content`; return them."""

        def texts() -> list[str] | None:
            shown = [t for t in self.telegram.texts(chat_id) if t != STOPPED]
            return shown if shown and joins(shown, content) else None

        return wait_until(texts, timeout=20, what="the answer is delivered")

    def close(self) -> None:
        self.http.close()


def joins(texts: list[str], answer: str) -> bool:
    """Whether `texts`, put back with only whitespace between and around, are `answer`."""
    position = 0
    for text in texts:
        found = answer.find(text, position)
        if found < 0 or answer[position:found].strip():
            return False
        position = found + len(text)
    return not answer[position:].strip()


def paced(calls: list[Call]) -> list[float]:
    """The gaps between consecutive calls."""
    return [b.at - a.at for a, b in itertools.pairwise(calls)]


def content_calls(telegram: FakeTelegram, chat_id: int = CHAT) -> list[Call]:
    return [c for c in telegram.calls_of(chat_id=chat_id) if c.method != "sendChatAction"]


@pytest.fixture
def telegram() -> Iterator[FakeTelegram]:
    fake = FakeTelegram(SENTINEL_TELEGRAM_TOKEN).start()
    yield fake
    fake.stop()


@pytest.fixture
def make_bot(
    telegram: FakeTelegram, make_server: Callable[..., AppServer]
) -> Iterator[Callable[..., Bot]]:
    # `telegram` first, so that it stops after the servers (their deliveries end first).
    bots: list[Bot] = []

    def make(**overrides: Any) -> Bot:
        server = make_server(
            telegram_bot_token=SENTINEL_TELEGRAM_TOKEN,
            telegram_webhook_secret=SECRET,
            telegram_api_base=telegram.base_url,
            **overrides,
        )
        bot = Bot(server, telegram)
        bots.append(bot)
        return bot

    yield make
    for bot in bots:
        bot.close()


# --- the webhook -----------------------------------------------------------------------


def test_wrong_or_missing_secret_is_refused(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    for secret in ("not-the-secret", None, ""):
        response = bot.post(message_update("hello"), secret=secret)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
    # Nothing about the body is looked at without the secret.
    assert bot.http.post("/telegram/webhook", content=b"not json").status_code == 401
    assert bot.sessions() == []
    assert bot.telegram.calls == []


def test_no_webhook_unless_configured(client: httpx.Client) -> None:
    assert client.post("/telegram/webhook", json=message_update("hi")).status_code == 404
    assert "/telegram/webhook" not in client.get("/openapi.json").json()["paths"]


def test_webhook_is_documented(make_bot: Callable[..., Bot]) -> None:
    operation = make_bot().http.get("/openapi.json").json()["paths"]["/telegram/webhook"]["post"]
    assert "update_id" in str(operation["requestBody"])
    assert {"200", "401"} <= set(operation["responses"])


def test_the_webhook_answers_before_the_model(
    make_bot: Callable[..., Bot], fake: FakeUpstreamThread
) -> None:
    bot = make_bot()
    bot.say("[[fake tokens=3 stall_after=0]] hello")
    # Answered while the model had said nothing (it says nothing until released).
    fake.fake.wait_for(lambda: fake.fake.stalled_streams >= 1)
    assert bot.telegram.texts(CHAT) == []
    (session,) = bot.sessions()
    assert [m.role for m in bot.messages(session.id)] == ["user"]  # saved before the answer
    fake.fake.release()
    bot.delivered(bot.answer().content)


# --- streaming modes ------------------------------------------------------------------------


def test_draft_mode_streams_a_draft_at_most_once_a_second(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    bot.say("[[fake tokens=40 interval_ms=80]] hello")
    answer = bot.answer()
    texts = bot.delivered(answer.content)
    assert len(texts) == 1 and answer.status == "complete"
    telegram = bot.telegram
    drafts = telegram.calls_of("sendMessageDraft", CHAT)
    assert len(drafts) >= 2, "the answer is shown while it streams"
    for draft in drafts:
        assert answer.content.startswith(draft.params["text"])
        assert draft.params["can_stop"] is True
    assert len({d.params["draft_id"] for d in drafts}) == 1
    # Typing came first, before any text.
    assert telegram.calls_of(chat_id=CHAT)[0].method == "sendChatAction"
    assert min(paced(content_calls(telegram))) >= 0.98


def test_edit_mode_edits_one_message_at_most_once_a_second(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot(telegram_mode="edit")
    telegram = bot.telegram
    # Telegram refusing an edit that changes nothing is no failure.
    telegram.fail("editMessageText", status=400, description=NOT_MODIFIED)
    bot.say("[[fake tokens=40 interval_ms=80]] hello")
    answer = bot.answer()
    assert bot.delivered(answer.content) == [answer.content.strip()]
    (message,) = telegram.chat(CHAT)
    assert message.edits >= 1
    assert not telegram.calls_of("sendMessageDraft")
    assert len(telegram.calls_of("sendMessage", CHAT)) == 1
    assert min(paced(content_calls(telegram))) >= 0.98


def test_chunks_mode_posts_a_message_per_chunk(
    make_bot: Callable[..., Bot], fake: FakeUpstreamThread
) -> None:
    bot = make_bot(telegram_mode="chunks", telegram_chunk_chars=40)
    bot.say("[[fake tokens=30 stall_after=20]] hello")
    # While the model is stalled mid-answer, the chunks so far are already posted.
    fake.fake.wait_for(lambda: fake.fake.stalled_streams >= 1)
    bot.telegram.wait_for(lambda: len(bot.telegram.chat(CHAT)) >= 2)
    early = bot.telegram.texts(CHAT)
    fake.fake.release()
    answer = bot.answer()
    texts = bot.delivered(answer.content)
    assert texts[: len(early)] == early
    assert len(texts) >= 4 and all(0 < len(t) <= 40 for t in texts)
    assert not bot.telegram.calls_of("sendMessageDraft")


def test_a_long_answer_is_split_at_4096(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    bot.say("[[fake tokens=1600]] a long one")
    answer = bot.answer()
    assert len(answer.content) > 2 * 4096
    texts = bot.delivered(answer.content)
    assert len(texts) >= 3
    assert all(utf16_len(t) <= 4096 for t in texts)
    # Cut at sentence ends (the answer has one every few words), never mid-word.
    assert all(t.endswith(".") for t in texts[:-1])


def test_markdown_code_is_sent_as_entities(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    bot.say("Look:\n```python\nprint(1)\n```\nand `x` **bold**")
    answer = bot.answer()
    (text,) = bot.delivered(answer.content)
    (final,) = bot.telegram.calls_of("sendMessage", CHAT)
    assert "parse_mode" not in final.params  # nothing for Telegram to parse, and fail on
    entities = final.params["entities"]
    assert [e["type"] for e in entities] == ["pre", "code"]
    assert entities[0]["language"] == "python"
    pre = entities[0]
    assert text[pre["offset"] : pre["offset"] + pre["length"]] == "print(1)"


def test_refused_formatting_is_sent_plain(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    bot.telegram.fail(
        "sendMessage", status=400, description="Bad Request: can't parse entities: whatever"
    )
    bot.say("Some `code` here")
    answer = bot.answer()
    bot.delivered(answer.content)
    first, second = bot.telegram.calls_of("sendMessage", CHAT)
    assert "entities" in first.params and "entities" not in second.params


# --- what Telegram does to us -----------------------------------------------------------------


def test_429_is_waited_out_and_the_final_text_kept(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    telegram = bot.telegram
    telegram.fail("sendMessageDraft", status=429, retry_after=2)
    telegram.fail("sendMessage", status=429, retry_after=1)
    bot.say("[[fake tokens=30 interval_ms=80]] hello")
    answer = bot.answer()
    assert bot.delivered(answer.content) == [answer.content.strip()]
    limited, after, *_ = content_calls(telegram)
    assert limited.method == "sendMessageDraft"
    assert after.at - limited.at >= 2.0 - 0.02, "retry_after is honoured"
    finals = telegram.calls_of("sendMessage", CHAT)
    assert len(finals) == 2 and finals[1].at - finals[0].at >= 1.0 - 0.02
    assert finals[0].params["text"] == finals[1].params["text"]


def test_a_slow_bot_api_never_slows_the_run(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    bot.telegram.delay("sendChatAction", 6.0)
    started = time.monotonic()
    bot.say("[[fake tokens=10]] hello")
    answer = bot.answer()
    assert time.monotonic() - started < 5.0, "the run ended while Telegram was still slow"
    bot.delivered(answer.content)


def test_a_retried_update_starts_no_second_run(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    update = message_update("[[fake tokens=20 interval_ms=50]] once")
    assert bot.post(update).status_code == 200
    assert bot.post(update).status_code == 200  # Telegram retries while it streams
    answer = bot.answer()
    bot.delivered(answer.content)
    assert bot.post(update).status_code == 200  # and again after the end
    (session,) = bot.sessions()
    roles = [m.role for m in bot.messages(session.id)]
    assert roles == ["user", "assistant"]
    wait_until(lambda: not bot.server.state.registry.live_count)
    assert len(bot.telegram.calls_of("sendMessage", CHAT)) == 1


def test_a_retried_update_in_another_process_starts_no_second_run(
    make_bot: Callable[..., Bot], tmp_path: Path
) -> None:
    # Two instances, one database (each with its own spool).
    first, second = make_bot(), make_bot(spool_dir=tmp_path / "second-spool")
    update = message_update("[[fake tokens=5]] once")
    assert first.post(update).status_code == 200
    answer = first.answer()
    first.delivered(answer.content)
    assert second.post(update).status_code == 200
    (session,) = first.sessions()
    assert [m.role for m in first.messages(session.id)] == ["user", "assistant"]


# --- commands -------------------------------------------------------------------------------------


def test_stop_cancels_the_answer_mid_way(
    make_bot: Callable[..., Bot], fake: FakeUpstreamThread
) -> None:
    bot = make_bot()
    bot.say("[[fake tokens=50 stall_after=8]] go on")
    fake.fake.wait_for(lambda: fake.fake.stalled_streams >= 1)
    bot.say("/stop")
    answer = bot.answer()
    assert answer.status == "cancelled" and answer.content
    texts = bot.delivered(answer.content)
    bot.telegram.wait_for(lambda: bot.telegram.texts(CHAT)[-1] == STOPPED)
    assert joins(texts, answer.content)


def test_the_drafts_stop_button_cancels_the_run(
    make_bot: Callable[..., Bot], fake: FakeUpstreamThread
) -> None:
    bot = make_bot()
    bot.say("[[fake tokens=50 stall_after=8]] go on")
    fake.fake.wait_for(lambda: fake.fake.stalled_streams >= 1)
    draft = bot.telegram.wait_for(lambda: bot.telegram.calls_of("sendMessageDraft", CHAT))[0]
    stop = {
        "update_id": next(_update_ids),
        "stopped_message_generation": {
            "chat": {"id": CHAT, "type": "private"},
            "draft_id": draft.params["draft_id"],
        },
    }
    assert bot.post(stop).status_code == 200
    answer = bot.answer()
    assert answer.status == "cancelled"
    bot.delivered(answer.content)


def test_stop_with_nothing_running_says_so(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    bot.say("/stop")
    bot.telegram.wait_for(lambda: bot.telegram.texts(CHAT) == ["Nothing to stop."])


def test_new_starts_a_new_session(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    bot.say("first conversation")
    bot.answer()
    bot.say("/new")
    bot.telegram.wait_for(lambda: "Started a new conversation." in bot.telegram.texts(CHAT))
    bot.say("second conversation")
    answer = bot.answer()
    newest, oldest = bot.sessions()
    assert [m.content for m in bot.messages(newest.id) if m.role == "user"] == [
        "second conversation"
    ]
    assert len(bot.messages(oldest.id)) == 2
    assert answer.session_id == newest.id


def test_each_chat_is_its_own_conversation(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    bot.say("to one", chat_id=1)
    bot.say("to two", chat_id=2)
    one, two = bot.answer(chat_id=1), bot.answer(chat_id=2)
    assert one.session_id != two.session_id
    bot.delivered(one.content, chat_id=1)
    bot.delivered(two.content, chat_id=2)


# --- the run is a run like any other -------------------------------------------------------------


def test_the_bots_run_is_persisted_like_any_other(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    update = bot.say("Hello bot")
    answer = bot.answer()
    (session,) = bot.sessions()
    user, assistant = bot.messages(session.id)
    assert (user.role, user.content, user.client_message_id) == (
        "user",
        "Hello bot",
        f"telegram:{update['update_id']}",
    )
    assert (assistant.id, assistant.status, assistant.content) == (
        answer.id,
        "complete",
        "You said: Hello bot",
    )
    assert assistant.usage and assistant.metrics
    bot.delivered(assistant.content)
    # The first message answers the user's own.
    (final,) = bot.telegram.calls_of("sendMessage", CHAT)
    assert final.params["reply_parameters"]["message_id"] == update["message"]["message_id"]
    wait_until(lambda: bot.sessions()[0].title == "Hello bot", what="the session is titled")
    # A second message follows the answer: one branch, each row after the one before.
    bot.say("And again")
    bot.answer(count=2)
    rows = bot.messages(session.id)
    assert [row.parent_id for row in rows] == [None, *(row.id for row in rows[:-1])]


def test_typing_is_shown_until_text_comes(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    bot.say("[[fake first_token_ms=4500]] think first")
    answer = bot.answer()
    bot.delivered(answer.content)
    calls = bot.telegram.calls_of(chat_id=CHAT)
    before_text = list(itertools.takewhile(lambda c: c.method == "sendChatAction", calls))
    assert len(before_text) >= 2
    assert all(c.params["action"] == "typing" for c in before_text)
    assert 3.5 <= before_text[1].at - before_text[0].at <= 8.0


def test_typing_is_shown_again_while_tools_run(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    bot.say("[[fake tool=get_current_time preamble=3 first_token_ms=1200]] what time is it")
    answer = bot.answer()
    # A run with a tool round shows its rounds' text, in order (as its deltas do).
    rows = bot.messages(answer.session_id)
    bot.delivered("".join(m.content for m in rows if m.role == "assistant"))
    typing = bot.telegram.calls_of("sendChatAction", CHAT)
    # One while waiting for the first text; one when the tool round began.
    assert len(typing) == 2
    assert typing[1].at - typing[0].at >= 1.0


def test_set_webhook_command_registers_the_webhook(telegram: FakeTelegram) -> None:
    env = clean_env(
        CHATSTREAM_TELEGRAM_BOT_TOKEN=SENTINEL_TELEGRAM_TOKEN,
        CHATSTREAM_TELEGRAM_WEBHOOK_SECRET=SECRET,
        CHATSTREAM_TELEGRAM_API_BASE=telegram.base_url,
    )
    url = "https://bot.example.org/telegram/webhook"
    done = subprocess.run(
        [sys.executable, "-m", "chatstream", "telegram", "set-webhook", url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    WATCH.check(done.stdout + done.stderr, "chatstream telegram set-webhook")
    assert done.returncode == 0, done.stderr
    (call,) = telegram.calls_of("setWebhook")
    assert call.params["url"] == url
    assert call.params["secret_token"] == SECRET
    assert {"message", "stopped_message_generation"} <= set(call.params["allowed_updates"])

    refused = subprocess.run(
        [sys.executable, "-m", "chatstream", "telegram", "set-webhook", url],
        env={**env, "CHATSTREAM_TELEGRAM_API_BASE": "http://127.0.0.1:9/nowhere"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 3 and "not set" in refused.stderr
    WATCH.check(refused.stdout + refused.stderr, "chatstream telegram set-webhook")
