"""`chatstream serve | migrate | fake-upstream | chat`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from chatstream.config import Settings
from chatstream.logs import configure_logging, secrets_of

logger = logging.getLogger("chatstream")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chatstream", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="run the server (settings from CHATSTREAM_* variables)"
    )
    serve.add_argument("--host", help="overrides CHATSTREAM_HOST")
    serve.add_argument("--port", type=int, help="overrides CHATSTREAM_PORT")

    commands.add_parser("migrate", help="bring the database schema to the latest revision")

    fake = commands.add_parser("fake-upstream", help="serve the OpenAI-compatible stream emulator")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=9100)
    fake.add_argument("--tokens", type=int, default=None, help="tokens per answer")
    fake.add_argument("--interval-ms", type=float, default=0.0, help="pause between tokens")
    fake.add_argument(
        "--first-token-ms", type=float, default=0.0, help="pause before the first token"
    )

    chat = commands.add_parser(
        "chat", help="send one message to a running server and stream the answer"
    )
    chat.add_argument("message")
    chat.add_argument("--url", default="http://127.0.0.1:8000")
    chat.add_argument("--session", help="continue this session id")

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "migrate":
        return _migrate()
    if args.command == "fake-upstream":
        return _fake_upstream(args)
    return _chat(args)


def _settings(**overrides: object) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        # Each problem by setting and rule; never the value (pydantic's own
        # message would print it, secrets included).
        lines = [f"  {_variable(error['loc'])}: {error['msg']}" for error in exc.errors()]
        sys.stderr.write("chatstream: invalid configuration:\n" + "\n".join(lines) + "\n")
        raise SystemExit(2) from None


def _variable(location: tuple[int | str, ...]) -> str:
    if not location:
        return "settings"
    name = str(location[0])
    return name.upper() if name.startswith("openai_") else f"CHATSTREAM_{name.upper()}"


def _serve(args: argparse.Namespace) -> int:
    from chatstream.app import create_app
    from chatstream.server import ChatstreamServer, uvicorn_config

    settings = _settings(host=args.host, port=args.port)
    configure_logging(settings.log_level, secrets_of(settings))
    app = create_app(settings)
    ChatstreamServer(uvicorn_config(app, settings), app, settings).run()
    return 0


def alembic_config(database_url: str) -> object:
    from alembic.config import Config

    ini = _find_alembic_ini()
    config = Config(str(ini))
    config.set_main_option("script_location", str(ini.parent / "alembic"))
    config.attributes["database_url"] = database_url
    config.attributes["skip_logging_config"] = True
    return config


def _find_alembic_ini() -> Path:
    candidates = (
        [Path(os.environ["CHATSTREAM_ALEMBIC_INI"])]
        if "CHATSTREAM_ALEMBIC_INI" in os.environ
        else []
    )
    candidates.append(Path.cwd() / "alembic.ini")
    candidates.extend(parent / "alembic.ini" for parent in Path(__file__).resolve().parents)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    sys.stderr.write("chatstream: alembic.ini not found (set CHATSTREAM_ALEMBIC_INI)\n")
    raise SystemExit(2)


def _migrate() -> int:
    from alembic import command

    settings = _settings()
    configure_logging(settings.log_level, secrets_of(settings))
    command.upgrade(alembic_config(settings.database_url), "head")  # type: ignore[arg-type]
    logger.info("database schema is at the latest revision")
    return 0


def _fake_upstream(args: argparse.Namespace) -> int:
    from chatstream.upstream.emulator import Script
    from chatstream.upstream.fake_server import serve_forever

    configure_logging("info")
    defaults = Script(
        tokens=args.tokens, interval_ms=args.interval_ms, first_token_ms=args.first_token_ms
    )

    def ready(port: int) -> None:
        logger.info("fake upstream listening on http://%s:%d/v1", args.host, port)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(args.host, args.port, defaults, ready))
    return 0


def _chat(args: argparse.Namespace) -> int:
    import httpx2
    import orjson

    body: dict[str, object] = {"message": args.message}
    if args.session:
        body["session_id"] = args.session
    with (
        httpx2.Client(base_url=args.url, timeout=httpx2.Timeout(30, read=None)) as client,
        client.stream("POST", "/api/chat/stream", json=body) as response,
    ):
        if response.status_code != 200:
            sys.stderr.write(response.read().decode(errors="replace") + "\n")
            return 1
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            event = orjson.loads(line[6:])
            if event["type"] == "delta":
                sys.stdout.write(event["text"])
                sys.stdout.flush()
            elif event["type"] == "error":
                sys.stderr.write(f"\n[{event['code']}] {event['message']}\n")
            elif event["type"] == "done":
                sys.stdout.write(f"\n[{event['status']}; session {body.get('session_id') or ''}]\n")
            elif event["type"] == "start":
                body["session_id"] = event["session_id"]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
