"""The Telegram adapter (contract section 10): webhook, bot, deliveries, Bot API client."""

from chatstream.bots.telegram.api import BotApi
from chatstream.bots.telegram.bot import TelegramBot
from chatstream.bots.telegram.webhook import webhook_router

__all__ = ["BotApi", "TelegramBot", "webhook_router"]
