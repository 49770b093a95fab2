"""A run's token usage and timing figures, as `done` reports them.

Computed once per round and once per run, never per token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from chatstream.runs.accumulator import ChunkAccumulator
from chatstream.runs.events import MessageStatus, Metrics, Usage


def round_usage(
    accumulator: ChunkAccumulator, messages: Sequence[dict[str, Any]], status: MessageStatus
) -> Usage:
    """The usage the server reported for a round, or an estimate when it reported none."""
    reported = accumulator.usage
    if reported:
        try:
            prompt = int(reported.get("prompt_tokens") or 0)
            completion = int(reported.get("completion_tokens") or 0)
            total = int(reported.get("total_tokens") or prompt + completion)
            usage: Usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": total,
            }
            details = reported.get("completion_tokens_details")
            if isinstance(details, dict) and details.get("reasoning_tokens") is not None:
                usage["reasoning_tokens"] = int(details["reasoning_tokens"])
            return usage
        except (TypeError, ValueError, OverflowError):
            pass
    # No usage from the server: estimate. One streamed chunk is about one
    # token; a prompt is about four characters per token.
    completion = accumulator.content_chunks
    prompt = 0
    if completion or status == "complete":
        prompt = math.ceil(sum(len(str(m.get("content") or "")) for m in messages) / 4)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def total_usage(usages: Sequence[Usage]) -> Usage | None:
    """The run's usage: every round summed; None when nothing was asked or produced."""
    if not any(u["total_tokens"] for u in usages):
        return None
    total: Usage = {
        "prompt_tokens": sum(u["prompt_tokens"] for u in usages),
        "completion_tokens": sum(u["completion_tokens"] for u in usages),
        "total_tokens": sum(u["total_tokens"] for u in usages),
    }
    if any("reasoning_tokens" in u for u in usages):  # reported by the model server
        total["reasoning_tokens"] = sum(u.get("reasoning_tokens", 0) for u in usages)
    return total


def run_metrics(
    usage: Usage | None, *, started_at: float, first_text_at: float | None, finished_at: float
) -> Metrics:
    """Time to first text, duration, and completion tokens per second of streaming."""
    ttft_ms = None
    tokens_per_second = None
    if first_text_at is not None:
        ttft_ms = round((first_text_at - started_at) * 1000)
        streaming_s = finished_at - first_text_at
        if usage is not None and streaming_s > 0:
            tokens_per_second = round(usage["completion_tokens"] / streaming_s, 2)
    return {
        "ttft_ms": ttft_ms,
        "duration_ms": round((finished_at - started_at) * 1000),
        "tokens_per_second": tokens_per_second,
    }
