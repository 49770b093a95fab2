"""Chaos: fifty runs at once, each meeting its own fault, and the server none the worse.

Each run draws one fault (seeded, so every run of the suite draws the same):
the upstream drops, stalls, answers 500 or sends a malformed chunk; the
client reads slowly, disconnects, or cancels; or nothing goes wrong.
Afterwards every run has exactly one final row whose text is what a
follower of the whole run saw, nothing leaked (tasks, followers, upstream
streams), the server still serves, and memory is back within a bound.
"""

from __future__ import annotations

import asyncio
import gc
import random
import sqlite3
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.sse import Stream, iter_sse, read_stream
from tests.support.wait import wait_until

RUNS = 50
FAULTS = ["none", "drop", "stall", "status500", "malformed", "slow", "disconnect", "cancel"]
BODY = "[[fake tokens=24 interval_ms=4{extra}]] chaos {n}"
EXTRA = {
    "none": "",
    "drop": " drop_after=7",
    "stall": " stall_after=5",
    "status500": " status=500",
    "malformed": " malformed=content_number malformed_after=6",
    "slow": "",
    "disconnect": "",
    "cancel": " stall_after=4",
}


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


def follow_whole(base_url: str, message_id: str) -> Stream:
    """What a follower that read the run from its first event saw (once it ended)."""
    with httpx.stream("GET", f"{base_url}/api/runs/{message_id}/events", timeout=30) as response:
        assert response.status_code == 200, response.read()
        return read_stream(response)


def one_run(base_url: str, fault: str, n: int) -> tuple[str, str, Stream]:
    """Play the client's side of one run; return (fault, message id, what it saw)."""
    body = {"message": BODY.format(extra=EXTRA[fault], n=n)}
    with (
        httpx.Client(base_url=base_url, timeout=30) as client,
        client.stream("POST", "/api/chat/stream", json=body) as response,
    ):
        assert response.status_code == 200, response.read()
        events = iter_sse(response)
        head = read_stream(events, stop_after=1)
        message_id = head.events[0].data["message_id"]
        if fault == "disconnect":
            read_stream(events, stop_after=2)
            return fault, message_id, Stream()  # left mid-run
        if fault == "cancel":
            head.events += read_stream(events, stop_after=3).events
            assert client.post(f"/api/runs/{message_id}/cancel").status_code in (202, 409)
        if fault == "slow":
            # Reads nothing more until the run has ended, then everything at once.
            wait_until(
                lambda: client.get(f"/api/runs/{message_id}").json()["status"] != "running",
                timeout=30,
            )
        head.events += read_stream(events).events
        return fault, message_id, head


def test_fifty_runs_each_with_its_fault(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread, database_path: Path
) -> None:
    server = make_server(upstream_idle_timeout_s=1.0)
    registry = server.state.registry

    async def task_count() -> int:
        return len(asyncio.all_tasks())

    # A warm-up run, so that what is measured is chaos, not first use.
    one_run(server.base_url, "none", -1)
    gc.collect()
    baseline_tasks, baseline_rss = server.call(task_count), rss_mb()

    draw = random.Random(20261129)
    faults = [draw.choice(FAULTS) for _ in range(RUNS)]
    assert set(faults) == set(FAULTS)  # every fault is exercised
    with ThreadPoolExecutor(max_workers=RUNS) as pool:
        futures = [pool.submit(one_run, server.base_url, f, n) for n, f in enumerate(faults)]
        results = [future.result(timeout=60) for future in futures]

    wait_until(lambda: registry.live_count == 0, timeout=30, what="every run ended")
    wait_until(lambda: registry.follower_count == 0, timeout=10, what="every follower gone")
    fake.fake.wait_for(lambda: fake.fake.active_streams == 0)

    with sqlite3.connect(database_path) as db:
        rows = {
            str(uuid.UUID(row[0])): (row[1], row[2], row[3])
            for row in db.execute(
                "select id, content, status, (select count(*) from messages m"
                " where m.reply_id = messages.id) from messages where role = 'assistant'"
            )
        }
    expected_status = {
        "none": {"complete"},
        "slow": {"complete"},
        "disconnect": {"complete"},
        "drop": {"error"},
        "stall": {"error"},
        "status500": {"error"},
        "malformed": {"error"},
        "cancel": {"cancelled", "complete"},
    }
    for fault, message_id, seen in results:
        whole = follow_whole(server.base_url, message_id)
        assert whole.types[0] == "start" and whole.types[-1] == "done", (fault, whole.types)
        content, status, replies_to = rows[message_id]
        assert replies_to == 1, (fault, message_id)  # exactly one final row for its question
        assert content == whole.text, fault
        assert status == whole.done["status"] and status in expected_status[fault], fault
        assert whole.done["persisted"] is True
        if seen.events:  # the client read to the end: it saw what was saved
            assert seen.text == content and seen.done == whole.done, fault
    assert len(rows) == RUNS + 1

    # The server still serves, and holds nothing more than before.
    assert one_run(server.base_url, "none", RUNS)[2].done["status"] == "complete"
    wait_until(lambda: registry.live_count == 0 and registry.follower_count == 0)

    async def settled() -> int:
        await asyncio.sleep(0)
        return len(asyncio.all_tasks())

    assert server.call(settled) <= baseline_tasks + 1  # the inspecting coroutine itself
    gc.collect()
    growth = rss_mb() - baseline_rss
    assert growth < 80, f"RSS grew {growth:.0f} MB"
