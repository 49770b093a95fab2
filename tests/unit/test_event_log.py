"""The run event log: numbering, replay, live follow, idle ticks, closing."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from chatstream.runs.events import Event, EventPayload
from chatstream.runs.log import MemoryEventLog


def delta(text: str) -> EventPayload:
    return {"type": "delta", "text": text}


DONE: EventPayload = {
    "type": "done",
    "message_id": "m",
    "status": "complete",
    "finish_reason": "stop",
    "persisted": True,
    "usage": None,
    "metrics": None,
}


def test_sequence_numbers_and_replay() -> None:
    log = MemoryEventLog()
    events = [log.append(delta(str(i))) for i in range(5)]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert [e.seq for e in log.after(3)] == [4, 5]
    assert log.after(5) == []
    assert events[0].json == b'{"type":"delta","text":"0"}'


def test_any_position_of_a_long_log_reads_the_same_live_and_ended() -> None:
    """Newest events come back as they were appended, older ones from the JSON buffer."""
    log = MemoryEventLog()
    texts = [f"t{i} ✓" for i in range(300)]
    for text in texts:
        log.append(delta(text))

    def check(after: int) -> None:
        events = log.after(after)
        assert [e.seq for e in events] == list(range(after + 1, 301 + log.closed))
        assert [e.data.get("text") for e in events[: 300 - after]] == texts[after:]
        assert b"".join(e.json for e in events[: 300 - after]) == b"".join(
            b'{"type":"delta","text":"%s"}' % t.encode() for t in texts[after:]
        )

    for after in (0, 1, 150, 250, 267, 268, 299, 300):
        check(after)
    log.append(DONE)
    for after in (0, 150, 299, 300):
        check(after)
    assert log.after(301) == []
    assert log.last_seq == 301


def test_append_after_done_is_refused() -> None:
    log = MemoryEventLog()
    log.append(DONE)
    assert log.closed
    with pytest.raises(RuntimeError):
        log.append(delta("late"))


def test_followers_get_batches_live_and_stop_at_done() -> None:
    async def scenario() -> list[list[int]]:
        log = MemoryEventLog()
        log.append(delta("a"))
        batches: list[list[int]] = []

        async def follower() -> None:
            async for batch in log.follow(0, idle_timeout=5):
                batches.append([e.seq for e in batch])

        task = asyncio.create_task(follower())
        await asyncio.sleep(0)
        log.append(delta("b"))
        log.append(delta("c"))  # appended together: read together
        await asyncio.sleep(0)
        log.append(DONE)
        await asyncio.wait_for(task, 5)
        return batches

    assert asyncio.run(scenario()) == [[1], [2, 3], [4]]


def test_idle_follower_gets_empty_batches() -> None:
    async def scenario() -> int:
        log = MemoryEventLog()
        empties = 0
        async for batch in log.follow(0, idle_timeout=0.01):
            if not batch:
                empties += 1
                if empties == 3:
                    log.append(DONE)
        return empties

    assert asyncio.run(scenario()) == 3


def test_following_an_ended_log_past_its_end_returns_at_once() -> None:
    async def scenario() -> list[list[int]]:
        log = MemoryEventLog()
        log.append(delta("a"))
        log.append(DONE)
        return [[e.seq for e in b] async for b in log.follow(2, idle_timeout=5)]

    assert asyncio.run(scenario()) == []


def test_cancelled_follower_leaves_no_waiter() -> None:
    async def scenario() -> int:
        log = MemoryEventLog()

        async def follower() -> None:
            async for _ in log.follow(0, idle_timeout=5):
                pass

        task = asyncio.create_task(follower())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return len(log._waiters)

    assert asyncio.run(scenario()) == 0


class RecordingPusher:
    """A caught-up reader whose writes always finish at once; records each write."""

    def __init__(self) -> None:
        self.writes: list[list[int]] = []

    def push(self, events: list[Event]) -> bool:
        self.writes.append([e.seq for e in events])
        return True

    @property
    def wants_more(self) -> bool:
        return True

    async def drain(self) -> None:
        pass


def test_what_one_upstream_read_appends_reaches_a_pushed_reader_in_one_write() -> None:
    async def scenario() -> tuple[RecordingPusher, list[list[int]]]:
        log = MemoryEventLog()
        log.append(delta("a"))
        pusher = RecordingPusher()
        batches: list[list[int]] = []

        async def follow() -> None:
            async for batch in log.follow(0, 60, pusher):
                batches.append([e.seq for e in batch])

        reader = asyncio.create_task(follow())
        while not log._pushers:  # read event 1 from the log, then waits to be pushed to
            await asyncio.sleep(0)
        log.append(delta("b"))  # alone: a write of its own
        with log.held():
            for text in "cde":
                log.append(delta(text))
            with log.held():  # nested: the outer block hands them on
                log.append(delta("f"))
            assert pusher.writes == [[2]]  # nothing of the block has left yet
        log.append(DONE)
        await asyncio.wait_for(reader, 5)
        return pusher, batches

    pusher, batches = asyncio.run(scenario())
    assert batches == [[1]]
    assert pusher.writes == [[2], [3, 4, 5, 6], [7]]


def test_a_delta_event_is_encoded_exactly_as_its_payload() -> None:
    for text in [
        "",
        "plain",
        'quote " and \\ back',
        "tab\tnew\nline\x01",
        "é ✓ 🙂 中文",
        "</script>",
    ]:
        log = MemoryEventLog()
        event = log.append(delta(text))
        assert event.json == orjson.dumps(delta(text))
        assert log.after(0)[0].data == delta(text)
