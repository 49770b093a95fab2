"""`chatstream telegram set-webhook URL`: point Telegram at this server's webhook."""

from __future__ import annotations

from chatstream.bots.telegram.api import BotApi
from chatstream.config import Settings

# The updates the bot handles: messages, and the draft's stop button.
ALLOWED_UPDATES = ["message", "stopped_message_generation"]


async def set_webhook(settings: Settings, url: str) -> None:
    """Register `url` (…/telegram/webhook) with the bot's secret; raises on refusal."""
    if settings.telegram_bot_token is None or settings.telegram_webhook_secret is None:
        raise ValueError(
            "set CHATSTREAM_TELEGRAM_BOT_TOKEN and CHATSTREAM_TELEGRAM_WEBHOOK_SECRET first"
        )
    token = settings.telegram_bot_token.get_secret_value()
    async with BotApi(token, settings.telegram_api_base) as api:
        await api.call(
            "setWebhook",
            {
                "url": url,
                "secret_token": settings.telegram_webhook_secret.get_secret_value(),
                "allowed_updates": ALLOWED_UPDATES,
            },
        )
