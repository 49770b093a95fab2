"""`chatstream serve | migrate | fake-upstream | chat | telegram set-webhook`.

Exit statuses: 0 done; 2 a configuration or usage error (one line on stderr,
never a traceback); 3 something could not be used or reached (`serve` and
`migrate`: the database, its schema, Redis, with one line saying which and
what to do; `chat`: the server); `chat` also exits 1 when the answer ended in
error or was refused, and 130 when stopped with Ctrl-C. `serve --workers N`
exits with the status of a worker that could not start (2 or 3, its one line
on stderr), and 1 when a worker had to be killed for not stopping in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from pydantic import ValidationError

from chatstream.config import ConfigurationError, Settings
from chatstream.errors import StartupError
from chatstream.logs import Redactor, configure_logging, secrets_of
from chatstream.storage.migrations import alembic_config

__all__ = ["alembic_config", "main"]

logger = logging.getLogger("chatstream")

CONFIGURATION_ERROR = 2
STARTUP_FAILED = 3  # as uvicorn exits when the application's start-up fails


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chatstream", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="run the server (settings from CHATSTREAM_* variables)"
    )
    serve.add_argument("--host", help="overrides CHATSTREAM_HOST")
    serve.add_argument("--port", type=int, help="overrides CHATSTREAM_PORT")
    serve.add_argument(
        "--workers",
        type=_worker_count,
        default=1,
        help="serve with N processes on one socket (needs CHATSTREAM_REDIS_URL; default 1)",
    )

    commands.add_parser("migrate", help="bring the database schema to the latest revision")

    fake = commands.add_parser("fake-upstream", help="serve the OpenAI-compatible stream emulator")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=9100)
    fake.add_argument("--tokens", type=int, default=None, help="tokens per answer")
    fake.add_argument("--interval-ms", type=float, default=0.0, help="pause between tokens")
    fake.add_argument(
        "--first-token-ms", type=float, default=0.0, help="pause before the first token"
    )

    from chatstream.terminal import add_chat_arguments

    add_chat_arguments(
        commands.add_parser(
            "chat",
            help="talk to a running server: one message, or an interactive loop without one",
        )
    )

    telegram = commands.add_parser("telegram", help="manage the Telegram bot")
    telegram_commands = telegram.add_subparsers(dest="telegram_command", required=True)
    set_webhook = telegram_commands.add_parser(
        "set-webhook",
        help="register URL (https://…/telegram/webhook) as the bot's webhook, with its secret",
    )
    set_webhook.add_argument("url")

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "migrate":
        return _migrate()
    if args.command == "fake-upstream":
        return _fake_upstream(args)
    if args.command == "telegram":
        return _telegram_set_webhook(args)
    from chatstream.terminal import chat

    return chat(args)


def fail(message: str, status: int = CONFIGURATION_ERROR) -> NoReturn:
    """One line on stderr, then exit: what is wrong and what to change."""
    sys.stderr.write(f"chatstream: {message}\n")
    raise SystemExit(status)


def _settings(**overrides: object) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        # Each problem by variable and rule, on one line; never the value
        # (pydantic's own message would print it, secrets included).
        problems = [f"{_variable(e['loc'])}: {_rule(e['msg'])}" for e in exc.errors()]
        fail("invalid configuration: " + "; ".join(problems))


def _variable(location: tuple[int | str, ...]) -> str:
    if not location:
        return "settings"
    name = str(location[0])
    if name.isupper():  # an alias, already the variable's name (OPENAI_API_KEY)
        return name
    return name.upper() if name.startswith("openai_") else f"CHATSTREAM_{name.upper()}"


def _rule(message: str) -> str:
    return message.removeprefix("Value error, ")


def _check_configuration(settings: Settings) -> None:
    """What `Settings` alone cannot know: the tool names and the JWT key must be usable."""
    from chatstream.auth import Authenticator
    from chatstream.tools import ToolRegistry

    try:
        ToolRegistry.default().select(settings.tools)
        Authenticator(settings)
    except ConfigurationError as exc:
        fail(str(exc))


def _worker_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of processes (1 or more)")
    return count


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(host=args.host, port=args.port)
    if args.workers > 1:
        return _serve_workers(settings, args.workers)
    from chatstream.app import create_app
    from chatstream.durability.spool_layout import gather
    from chatstream.server import serve
    from chatstream.startup import spool_checked

    try:
        app = create_app(settings)
        configure_logging(settings.log_level, secrets_of(settings))
        with spool_checked(settings.spool_dir):
            gather(settings.spool_dir, workers=1)  # what workers left, should there be any
    except ConfigurationError as exc:
        fail(str(exc))
    except StartupError as exc:
        fail(str(exc), STARTUP_FAILED)
    return serve(app, settings)


def _serve_workers(settings: Settings, workers: int) -> int:
    if settings.redis_url is None:
        fail(
            f"--workers {workers} needs CHATSTREAM_REDIS_URL: the workers share runs, limits "
            "and the run cap through Redis; set it (redis://host:6379/0), or serve with one "
            "process"
        )
    _check_configuration(settings)
    from chatstream.supervisor import WorkerCouldNotStart, serve_workers

    try:
        return serve_workers(settings, workers)
    except ConfigurationError as exc:
        fail(str(exc))
    except StartupError as exc:
        fail(str(exc), STARTUP_FAILED)
    except WorkerCouldNotStart as exc:
        fail(str(exc), exc.status)


def _telegram_set_webhook(args: argparse.Namespace) -> int:
    from chatstream.bots.telegram.api import TelegramError, TelegramUnreachable
    from chatstream.bots.telegram.setup import set_webhook

    settings = _settings()
    configure_logging(settings.log_level, secrets_of(settings))
    try:
        asyncio.run(set_webhook(settings, args.url))
    except ValueError as exc:
        fail(f"the webhook was not set: {exc}")
    except (TelegramError, TelegramUnreachable) as exc:
        fail(f"the webhook was not set: {exc}", STARTUP_FAILED)
    logger.info("Telegram sends this bot's updates to %s", args.url)
    return 0


def _migrate() -> int:
    settings = _settings()
    _check_configuration(settings)
    configure_logging(settings.log_level, secrets_of(settings))
    try:
        upgraded_from = asyncio.run(_upgrade(settings))
    except ConfigurationError as exc:
        fail(str(exc))
    except StartupError as exc:
        fail(str(exc), STARTUP_FAILED)
    if upgraded_from is None:  # else the upgrade's own line said so
        from chatstream.storage.migrations import HEAD_REVISION

        logger.info("database schema is up to date (revision %s)", HEAD_REVISION)
    return 0


async def _upgrade(settings: Settings) -> str | None:
    from chatstream.startup import prepare_database
    from chatstream.storage.db import Database

    async with Database.from_settings(settings) as database:
        return await prepare_database(
            database, auto_migrate=True, redact=Redactor(secrets_of(settings))
        )


def _fake_upstream(args: argparse.Namespace) -> int:
    from chatstream.emulation.fake_server import serve_forever
    from chatstream.emulation.script import Script

    configure_logging("info")
    defaults = Script(
        tokens=args.tokens, interval_ms=args.interval_ms, first_token_ms=args.first_token_ms
    )

    def ready(port: int) -> None:
        logger.info("fake upstream listening on http://%s:%d/v1", args.host, port)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(args.host, args.port, defaults, ready))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
