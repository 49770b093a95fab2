"""`/v1/responses` across instances: a response is streamed again, read and cancelled from
an instance other than the one generating it (OpenAI Python SDK, two `serve` processes)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai

from tests.fleet.conftest import FleetFactory
from tests.support.servers import FakeUpstreamThread


def sdk(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def summary(events: list[Any]) -> list[tuple[int, str, str]]:
    return [(e.sequence_number, e.type, getattr(e, "delta", "")) for e in events]


def test_a_response_is_resumed_read_and_cancelled_from_another_instance(
    fleet: FleetFactory, fake: FakeUpstreamThread
) -> None:
    a, b = fleet("a"), fleet("b")
    # Closed at the end: an SDK client left open leaks its sockets into the next test.
    with sdk(a.base_url) as on_a, sdk(b.base_url) as on_b:
        stream = on_a.responses.create(
            model="test-model", input="[[fake tokens=20 stall_after=8]] hi", stream=True
        )
        events = iter(stream)
        head = [next(events) for _ in range(8)]
        response_id = head[0].response.id  # type: ignore[union-attr]
        with ThreadPoolExecutor(max_workers=1) as pool:
            resumed = pool.submit(
                lambda: list(on_b.responses.retrieve(response_id, stream=True, starting_after=5))
            )
            live = on_b.responses.retrieve(response_id)
            assert live.status == "in_progress" and live.output_text  # the text so far
            fake.fake.release(wait_for=1)
            seen_by_a = head + list(events)
            seen_by_b = resumed.result(timeout=30)
        assert seen_by_a[-1].type == "response.completed"
        assert summary(seen_by_b) == summary(seen_by_a)[6:]
        final = on_b.responses.retrieve(response_id)
        assert final.status == "completed"
        assert final.output_text == seen_by_a[-1].response.output_text  # type: ignore[union-attr]

        # Cancelled from B, while A generates it: A's stream ends, cancelled.
        stalled = on_a.responses.create(
            model="test-model", input="[[fake tokens=20 stall_after=3]] again", stream=True
        )
        events = iter(stalled)
        created = next(events)
        cancelled = on_b.responses.cancel(created.response.id)  # type: ignore[union-attr]
        assert cancelled.status == "cancelled"
        rest = list(events)
        assert rest[-1].type == "response.incomplete"
        assert rest[-1].response.status == "cancelled"  # type: ignore[union-attr]
        fake.fake.release()
