"""`POST /telegram/webhook`: Telegram's updates in, answered within a second.

Mounted only when `CHATSTREAM_TELEGRAM_BOT_TOKEN` and
`CHATSTREAM_TELEGRAM_WEBHOOK_SECRET` are set. Telegram proves itself with
the secret in `X-Telegram-Bot-Api-Secret-Token` (set by `chatstream
telegram set-webhook`); anything else is 401 before the body is looked at.
Unlike the chat API, the body accepts fields it does not know: an update
carries whatever the Bot API has added since.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chatstream.bots.telegram.bot import TelegramBot
from chatstream.errors import InvalidRequest, Unauthorized


class TelegramUpdate(BaseModel):
    """A Telegram `Update` (https://core.telegram.org/bots/api#update)."""

    model_config = ConfigDict(extra="allow")

    update_id: int = Field(description="Telegram's id of the update; a retry repeats it.")
    message: dict[str, Any] | None = None
    stopped_message_generation: dict[str, Any] | None = None


class Accepted(BaseModel):
    ok: bool = True


async def get_bot(request: Request) -> TelegramBot:
    bot: TelegramBot = request.state.telegram
    return bot


Bot = Annotated[TelegramBot, Depends(get_bot)]


def webhook_router(secret: str) -> APIRouter:
    router = APIRouter(tags=["telegram"])
    expected = secret.encode()

    @router.post(
        "/telegram/webhook",
        response_model=Accepted,
        summary="Telegram bot updates",
        responses={
            401: {"description": "Missing or wrong `X-Telegram-Bot-Api-Secret-Token`"},
            422: {"description": "Not a Telegram update"},
            503: {"description": "Not taken now; Telegram sends it again later"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": TelegramUpdate.model_json_schema()}},
            }
        },
    )
    async def telegram_webhook(
        request: Request,
        bot: Bot,
        x_telegram_bot_api_secret_token: Annotated[str | None, Header()] = None,
    ) -> Accepted:
        """Take one Telegram update; answered within a second, before the model answers.

        A message starts a run in the chat's session (owner `telegram:<chat id>`)
        whose answer is delivered to the chat as it streams; `/new` starts a new
        session, `/stop` cancels the live answer. A repeated `update_id` starts
        nothing.
        """
        # The secret first: nothing about the body is said to a caller without it.
        given = (x_telegram_bot_api_secret_token or "").encode()
        if not hmac.compare_digest(given, expected):
            raise Unauthorized("The webhook secret token is missing or wrong.")
        try:
            update = TelegramUpdate.model_validate_json(await request.body())
        except ValidationError:
            raise InvalidRequest("The body is not a Telegram update.") from None
        await bot.take(update.model_dump(exclude_none=True))
        return Accepted()

    return router
