"""A Telegram message with a NUL character, on PostgreSQL (whose text cannot hold one).

The bot builds its chat without the HTTP schemas, so the rule lives in the chat
service every transport shares: the user is told what is wrong, nothing is
saved, and the next message is answered as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from alembic import command

from chatstream.cli import alembic_config
from tests.e2e import test_telegram
from tests.e2e.test_telegram import CHAT, Bot
from tests.support.services import fresh_postgres_database, service_url

pytestmark = pytest.mark.postgres

# The Telegram tests' fixtures: the fake Bot API, and the app with the bot on.
telegram = test_telegram.telegram
make_bot = test_telegram.make_bot


@pytest.fixture(scope="module")
def postgres_database() -> Iterator[str]:
    with fresh_postgres_database(service_url("CHATSTREAM_TEST_POSTGRES_URL")) as url:
        command.upgrade(alembic_config(url), "head")  # type: ignore[arg-type]
        yield url


@pytest.fixture
def database_url(postgres_database: str) -> str:
    return postgres_database


def test_a_message_with_a_nul_is_refused_with_a_reason_and_the_next_is_answered(
    make_bot: Callable[..., Bot],
) -> None:
    bot = make_bot()
    bot.say("hello\x00world")  # (the webhook answers 200 whatever the text)
    bot.telegram.wait_for(lambda: any("NUL (U+0000)" in text for text in bot.telegram.texts(CHAT)))
    assert bot.sessions() == []
    bot.say("[[fake tokens=3]] hello")
    assert bot.answer().status == "complete"
