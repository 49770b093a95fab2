"""A Telegram chat over its owner's token quota is refused as every HTTP chat is.

The bot starts its runs through the same quota gate as the HTTP transports:
over quota, the user is told when to try again and no run starts.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.e2e import test_telegram
from tests.e2e.test_telegram import CHAT, Bot
from tests.support.servers import FakeUpstreamThread

# The Telegram tests' fixtures: the fake Bot API, and the app with the bot on.
telegram = test_telegram.telegram
make_bot = test_telegram.make_bot

USED_UP = "You have used your 20 tokens for this day window"


def test_a_chat_over_its_quota_is_told_when_to_try_again_and_nothing_runs(
    make_bot: Callable[..., Bot], fake: FakeUpstreamThread
) -> None:
    bot = make_bot(quota_tokens=20)
    bot.say("[[fake tokens=40]] a long first answer")
    first = bot.answer()
    assert first.status == "complete" and first.usage["total_tokens"] > 20
    asked = len(fake.fake.requests)
    bot.say("[[fake tokens=2]] one more")
    bot.telegram.wait_for(lambda: any(USED_UP in text for text in bot.telegram.texts(CHAT)))
    refusal = next(text for text in bot.telegram.texts(CHAT) if USED_UP in text)
    assert refusal.startswith("⚠️") and "Try again in" in refusal
    (session,) = bot.sessions()
    assert [m.role for m in bot.messages(session.id)] == ["user", "assistant"]  # nothing new
    assert len(fake.fake.requests) == asked  # the model was never asked
