"""Telegram shows the model's reasoning in the draft while it thinks, never in the answer's
messages (issue #25 item 1)."""

from __future__ import annotations

from collections.abc import Callable

from chatstream.bots.telegram.delivery import THINKING_MARK
from tests.e2e import test_telegram
from tests.e2e.test_reasoning import THOUGHT
from tests.e2e.test_telegram import CHAT, Bot

# The Telegram tests' fixtures: the fake Bot API, and the app with the bot on.
telegram = test_telegram.telegram
make_bot = test_telegram.make_bot


def test_the_draft_shows_the_reasoning_and_the_messages_only_the_answer(
    make_bot: Callable[..., Bot],
) -> None:
    bot = make_bot()
    # Reasoning for about 2.4 s: the draft (at most one update a second) shows it.
    bot.say("[[fake reasoning=8 tokens=4 interval_ms=300]] why?")
    answer = bot.answer()
    assert answer.status == "complete" and answer.reasoning == THOUGHT
    texts = bot.delivered(answer.content)  # the messages are exactly the answer's text
    assert all(THOUGHT.strip() not in text and THINKING_MARK not in text for text in texts)
    drafts = [call.params["text"] for call in bot.telegram.calls_of("sendMessageDraft", CHAT)]
    thinking = [draft for draft in drafts if draft.startswith(THINKING_MARK)]
    assert thinking, drafts
    assert all(draft.removeprefix(THINKING_MARK + "…") in THOUGHT for draft in thinking)
    # Once the text comes, the draft shows the text, never the reasoning again.
    first_text = next(i for i, draft in enumerate(drafts) if not draft.startswith(THINKING_MARK))
    assert all(not draft.startswith(THINKING_MARK) for draft in drafts[first_text:])
