"""What a run's log costs: a reader that is behind copies a bounded batch at a time, and an
ended log reports the bytes it keeps."""

from __future__ import annotations

import asyncio

from chatstream.runs.events import Event, EventPayload
from chatstream.runs.log import FOLLOW_BATCH_BYTES, MemoryEventLog

DONE: EventPayload = {
    "type": "done",
    "message_id": "m",
    "status": "complete",
    "finish_reason": "stop",
    "persisted": True,
    "usage": None,
    "metrics": None,
}


def ended_log(texts: list[str]) -> MemoryEventLog:
    log = MemoryEventLog()
    for text in texts:
        log.append({"type": "delta", "text": text})
    log.append(DONE)
    return log


def batches_of(log: MemoryEventLog, after: int) -> list[list[Event]]:
    async def read() -> list[list[Event]]:
        return [batch async for batch in log.follow(after, idle_timeout=10)]

    return asyncio.run(read())


def test_a_reader_far_behind_reads_in_bounded_batches_and_misses_nothing() -> None:
    texts = [f"{i:04d}" + "x" * 996 for i in range(300)]  # 300 KB of text
    log = ended_log(texts)
    batches = batches_of(log, 0)
    assert len(batches) > 1
    for batch in batches:
        assert len(batch) == 1 or sum(len(e.json) for e in batch) <= FOLLOW_BATCH_BYTES
    events = [e for batch in batches for e in batch]
    assert [e.seq for e in events] == list(range(1, 302))
    assert [e.data.get("text") for e in events[:-1]] == texts
    # From the middle, too.
    assert [e.seq for batch in batches_of(log, 150) for e in batch] == list(range(151, 302))


def test_an_event_larger_than_a_batch_comes_on_its_own() -> None:
    log = ended_log(["small", "x" * (2 * FOLLOW_BATCH_BYTES), "small"])
    batches = batches_of(log, 0)
    assert [[e.seq for e in batch] for batch in batches] == [[1], [2], [3, 4]]


def test_an_ended_log_reports_what_it_keeps() -> None:
    texts = ["y" * 1000] * 100
    log = ended_log(texts)
    json_bytes = sum(len(e.json) for e in log.after(0))
    assert json_bytes <= log.retained_bytes <= json_bytes + 8 * 102
