"""A run's one timer: `thinking` while nothing shows, and the three deadlines.

    first token   CHATSTREAM_UPSTREAM_FIRST_TOKEN_TIMEOUT_S from the start of each round
    idle          CHATSTREAM_UPSTREAM_IDLE_TIMEOUT_S since the upstream last sent anything
    whole run     CHATSTREAM_MAX_RUN_DURATION_S

It never runs per token: it sleeps until the next thing due and then
compares against the time of the last upstream activity, which the
generation records as it reads.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from chatstream.errors import UpstreamTimeout
from chatstream.runs.events import EventPayload
from chatstream.runs.generation import Generation
from chatstream.runs.spec import RunLimits


async def watch(
    generation: Generation,
    limits: RunLimits,
    *,
    started_at: float,
    clock: Callable[[], float],
    append: Callable[[EventPayload], object],
) -> UpstreamTimeout:
    """Send `thinking` events while due; return the timeout that tripped, if one does."""
    max_deadline = started_at + limits.max_duration_s
    next_thinking = started_at + limits.thinking_interval_s
    while True:
        now = clock()
        waiting_for_first = generation.last_activity == generation.round_started_at
        if generation.tools_running:
            deadline = max_deadline  # each tool has its own timeout
        elif waiting_for_first:
            deadline = min(generation.round_started_at + limits.first_token_timeout_s, max_deadline)
        else:
            deadline = min(generation.last_activity + limits.idle_timeout_s, max_deadline)
        if now >= deadline:
            if deadline == max_deadline:
                return UpstreamTimeout("The answer took longer than allowed.", retryable=False)
            if waiting_for_first:
                return UpstreamTimeout("The model server did not start answering in time.")
            return UpstreamTimeout("The model server stopped sending mid-answer.")
        # Never sleep past one idle period: the round's first data may
        # arrive meanwhile, and from then on the idle deadline rules.
        wake = min(deadline, now + limits.idle_timeout_s)
        if generation.tools_running or not generation.showing:
            if now >= next_thinking:
                append({"type": "thinking", "elapsed_ms": int((now - started_at) * 1000)})
                while next_thinking <= now:
                    next_thinking += limits.thinking_interval_s
            wake = min(wake, next_thinking)
        await anyio.sleep(max(wake - now, 0.001))
