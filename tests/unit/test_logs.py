"""Log lines: one per record, no secrets, no stack traces."""

from __future__ import annotations

import logging

from chatstream.config import Settings
from chatstream.logs import (
    FAULT,
    LOG_FORMAT,
    Redactor,
    RequestIdFilter,
    SafeFormatter,
    secrets_of,
)
from tests.support.sentinels import (
    SENTINEL_API_KEY,
    SENTINEL_DB_PASSWORD,
    SENTINEL_JWT_SECRET,
    TOKEN_ALICE,
)


def formatted(
    message: str, *args: object, exc: BaseException | None = None, secrets: list[str] | None = None
) -> str:
    record = logging.LogRecord("chatstream.test", logging.ERROR, __file__, 1, message, args, None)
    if exc is not None:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    RequestIdFilter().filter(record)
    return SafeFormatter(LOG_FORMAT, Redactor(secrets or [])).format(record)


def test_configured_secrets_are_redacted() -> None:
    settings = Settings(
        openai_api_key=SENTINEL_API_KEY,
        auth="jwt",
        jwt_secret=SENTINEL_JWT_SECRET,
        database_url=f"postgresql+asyncpg://app:{SENTINEL_DB_PASSWORD}@db/chat",
    )
    line = formatted(
        "key=%s secret=%s url=%s", SENTINEL_API_KEY, SENTINEL_JWT_SECRET, settings.database_url,
        secrets=[s for s in secrets_of(settings) if s],
    )  # fmt: skip
    for secret in (SENTINEL_API_KEY, SENTINEL_JWT_SECRET, SENTINEL_DB_PASSWORD):
        assert secret not in line
    assert "[redacted]" in line and "postgresql+asyncpg://" in line


def test_token_shaped_values_are_redacted_even_when_not_configured() -> None:
    line = formatted(
        'GET /ws/chat?token=%s "Authorization: Bearer abc.def.ghi" sk-proj-abcdefghijkl redis://u:pw123@h',
        TOKEN_ALICE,
    )
    assert TOKEN_ALICE not in line
    assert "abc.def.ghi" not in line and "sk-proj-abcdefghijkl" not in line and "pw123" not in line
    assert "Bearer [redacted]" in line


def test_exceptions_are_one_line_without_a_traceback() -> None:
    try:
        raise ValueError(f"boom with {SENTINEL_API_KEY}")
    except ValueError as caught:
        line = formatted("it failed", exc=caught, secrets=[SENTINEL_API_KEY])
    assert "\n" not in line
    assert "Traceback" not in line and "test_logs.py" not in line
    assert "ValueError: boom with [redacted]" in line


def test_multiline_messages_stay_on_one_line() -> None:
    assert "\n" not in formatted("first\nsecond\r\nthird")


def test_a_fault_is_logged_with_its_traceback_on_one_redacted_line() -> None:
    def failing_function() -> None:
        raise RuntimeError(f"bug near {SENTINEL_API_KEY}")

    try:
        failing_function()
    except RuntimeError as caught:
        record = logging.LogRecord(
            "chatstream.test", logging.ERROR, __file__, 1, "run failed", (), None
        )
        record.exc_info = (type(caught), caught, caught.__traceback__)
        setattr(record, FAULT, True)
        RequestIdFilter().filter(record)
        line = SafeFormatter(LOG_FORMAT, Redactor([SENTINEL_API_KEY])).format(record)
    assert "\n" not in line
    assert "Traceback" in line and "failing_function" in line and "test_logs.py" in line
    assert SENTINEL_API_KEY not in line and "RuntimeError: bug near [redacted]" in line
    # The same record formatted as an ordinary error stays one short line.
    setattr(record, FAULT, False)
    plain = SafeFormatter(LOG_FORMAT, Redactor([SENTINEL_API_KEY])).format(record)
    assert "Traceback" not in plain
