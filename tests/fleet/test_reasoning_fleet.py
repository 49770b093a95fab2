"""Reasoning crosses instances: a run on A is followed, reasoning and all, from B (through
Redis), from inside its reasoning (issue #25 item 1)."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.test_reasoning import THOUGHT
from tests.fleet.conftest import FleetFactory
from tests.support.servers import FakeUpstreamThread
from tests.support.sse import Stream, iter_sse, read_stream

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

MESSAGE = "[[fake reasoning=8 tokens=4 stall_after=2]] think first"


def test_reasoning_events_reach_a_follower_on_another_instance(
    fleet: FleetFactory, fake: FakeUpstreamThread
) -> None:
    a, b = fleet("a"), fleet("b")
    with (
        httpx.Client(base_url=a.base_url, timeout=30) as client,
        client.stream("POST", "/api/chat/stream", json={"message": MESSAGE}) as response,
    ):
        events = iter_sse(response)
        head = read_stream(events, stop_after=1 + 8 + 2)  # start, the reasoning, two deltas
        message_id = head.events[0].data["message_id"]
        with httpx.stream(
            "GET",
            f"{b.base_url}/api/runs/{message_id}/events",
            headers={"Last-Event-ID": "3"},  # from inside the reasoning
            timeout=30,
        ) as on_b:
            seen_on_b = iter_sse(on_b)
            first = next(e for e in seen_on_b if not isinstance(e, str))
            fake.fake.release(wait_for=1)
            later = Stream(events=[first, *read_stream(seen_on_b).events])
        on_a = Stream(events=head.events + read_stream(events).events)
    assert on_a.types[:11] == ["start", *["reasoning"] * 8, "delta", "delta"]
    assert [(e.id, e.event, e.data) for e in later.events] == [
        (e.id, e.event, e.data) for e in on_a.events[3:]
    ]
    assert "".join(e.data["text"] for e in on_a.of("reasoning")) == THOUGHT
    session_id = on_a.events[0].data["session_id"]
    rows = httpx.get(f"{b.base_url}/api/sessions/{session_id}/messages", timeout=10).json()
    assert rows["items"][-1]["reasoning"] == THOUGHT
