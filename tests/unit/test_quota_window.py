"""The quota window's arithmetic, the settings that name it, and what a run's end counts."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from chatstream.config import Settings
from chatstream.limiting.quotas.quotas import Quotas
from chatstream.limiting.quotas.window import window_at, window_seconds
from chatstream.runs.accumulator import ChunkAccumulator
from chatstream.runs.lifecycle import RunRecord
from chatstream.runs.usage import round_usage, total_usage


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_a_day_is_the_utc_day_and_every_window_is_aligned_to_its_length() -> None:
    day = window_at(epoch("2026-12-07T23:59:59.500"), 86400)
    assert (day.start, day.end) == (epoch("2026-12-07T00:00:00"), epoch("2026-12-08T00:00:00"))
    assert day.reset_after(epoch("2026-12-07T23:59:59.500")) == 1
    assert day.reset_after(epoch("2026-12-07T00:00:00")) == 86400
    midnight = window_at(epoch("2026-12-08T00:00:00"), 86400)
    assert midnight.start == day.end  # the boundary belongs to the next window
    hour = window_at(epoch("2026-12-07T10:30:00"), 3600)
    assert hour.start == epoch("2026-12-07T10:00:00")
    odd = window_at(1000.0, 7)  # a window of N seconds starts at multiples of N
    assert (odd.start, odd.end) == (994, 1001)
    assert odd.reset_after(1000.2) == 1


@pytest.mark.parametrize(
    ("value", "seconds"), [("minute", 60), ("HOUR", 3600), ("day", 86400), (" 90 ", 90)]
)
def test_window_names_and_numbers(value: str, seconds: int) -> None:
    assert window_seconds(value) == seconds
    assert Settings(quota_tokens=1, quota_window=value).quota_window_s == seconds


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"quota_window": "week"}, "minute, hour, day or a whole number of seconds"),
        ({"quota_window": "0"}, "minute, hour, day or a whole number of seconds"),
        ({"quota_models": "a"}, "is not model=tokens"),
        ({"quota_models": "nope=5"}, "not in CHATSTREAM_MODELS"),
        ({"quota_tokens": None, "quota_models": "a=5"}, "needs CHATSTREAM_QUOTA_TOKENS"),
    ],
)
def test_quota_settings_that_cannot_work_say_what_to_fix(
    values: dict[str, object], says: str
) -> None:
    with pytest.raises(ValidationError, match=says):
        Settings(**{"models": ["a", "b"], "quota_tokens": 100, **values})


def test_per_model_limits_parse() -> None:
    settings = Settings(models=["a", "b:8b"], quota_tokens=100, quota_models="a=5, b:8b=0")
    assert settings.quota_models == {"a": 5, "b:8b": 0}


def record(usage: dict[str, int] | None, *, cached: bool = False) -> RunRecord:
    return RunRecord(
        owner="alice",
        session_id=uuid.uuid4(),
        message_id=uuid.uuid4(),
        user_message_id=uuid.uuid4(),
        model="a",
        status="complete",
        finish_reason="stop",
        persisted=True,
        usage=usage,  # type: ignore[arg-type]
        metrics={"ttft_ms": 1, "duration_ms": 2, "tokens_per_second": None, "cached": cached},
        error=None,
    )


def test_reasoning_tokens_count_as_the_server_reported_them() -> None:
    # A reasoning model's usage: completion_tokens holds its hidden reasoning too.
    accumulator = ChunkAccumulator()
    accumulator.feed({"choices": [{"index": 0, "delta": {"content": "Yes."}}]})
    accumulator.feed(
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 12,
                "completion_tokens": 530,
                "total_tokens": 542,
                "completion_tokens_details": {"reasoning_tokens": 528},
            },
        }
    )
    usage = total_usage([round_usage(accumulator, [], "complete")])
    settings = Settings(models=["a"], quota_tokens=1000)
    moment = epoch("2026-12-07T12:00:00")

    async def scenario() -> tuple[int, int]:
        async with Quotas(settings, clock=lambda: moment) as quotas:
            quotas.run_finished(record(dict(usage or {})))
            quotas.run_finished(
                record(
                    {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18}, cached=True
                )
            )
            report = await quotas.usage("alice")
            standing = await quotas.standing("alice", "a")
            assert standing is not None
            return report.used, standing.remaining

    assert asyncio.run(scenario()) == (542, 1000 - 542)
