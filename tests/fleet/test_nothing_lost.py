"""Nothing a client saw is lost when the worker generating it dies or hangs (contract §6).

Real `chatstream serve` processes on a fresh PostgreSQL database and the
shared Redis. Every run has followers on both workers: the chat's own stream
(on the worker that generates it; when that worker dies, it resumes from its
last id on whichever instance answers, as an EventSource does) and one
following from the other worker from the start. What must hold for every run:
every follower reaches `done`, no follower is sent an id twice, two followers
sent the same id were sent the same event, and the database holds the longest
text any follower received (or, for an answer its worker had saved whole,
that answer).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import httpx
import pytest

from tests.fleet.conftest import FleetFactory, WorkersFactory, last_seq
from tests.fleet.followers import Follower, Seen
from tests.fleet.test_workers import (
    INSTANCE,
    anyone,
    assistant_rows,
    client_on,
    exactly,
    other_than,
)
from tests.support.servers import FakeUpstreamThread
from tests.support.wait import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

KILLS = 20


def count(seen: Seen, kind: str) -> int:
    return sum(1 for event in seen.events if event.type == kind)


# Where in its run a worker is killed: a directive, and when the run has got there
# (None: after a random number of deltas).
PHASES: dict[str, tuple[str, Callable[[Seen], bool] | None]] = {
    "before the first token": ("[[fake first_token_ms=60000]]", lambda s: count(s, "start") == 1),
    "mid-text": ("[[fake tokens=3000 interval_ms=3]]", None),
    "mid-tool-round": (
        "[[fake tool=get_current_time tool_rounds=3 preamble=4 tokens=40 interval_ms=8]]",
        lambda s: count(s, "tool_call") >= 1,
    ),
    "just before done": ("[[fake tokens=15 stall_after=15]]", lambda s: count(s, "delta") == 15),
}


def assert_nothing_lost(database_url: str, followers: list[Follower], what: str) -> None:
    for follower in followers:
        follower.join(60)
        seen = follower.seen
        assert not follower.is_alive() and seen.failure is None, (what, seen.failure)
        # (A 204 on resume would mean the follower was ahead of the run's end: it never
        # got `done`, which is what must not happen.)
        assert seen.done is not None, (what, "never reached done", seen.ended_with_204)
        assert len(set(seen.ids)) == len(seen.ids), (what, "an id was sent twice", seen.ids)
        assert seen.ids == sorted(seen.ids), (what, "ids out of order", seen.ids)
    by_id: dict[int, str] = {}
    for follower in followers:
        for event in follower.seen.events:
            assert event.id is not None
            earlier = by_id.setdefault(event.id, event.raw_data)
            assert earlier == event.raw_data, (what, f"id {event.id} meant two events")
    texts = sorted((f.seen.text for f in followers), key=len)
    longest = texts[-1]
    for text in texts:
        assert longest.startswith(text), (what, "followers saw different texts")
    session_id = next(f.session_id for f in followers if f.session_id is not None)
    rows = assistant_rows(database_url, session_id)
    assert rows, (what, "nothing saved")
    saved = "".join(content for _, _, content in rows)
    status = rows[-1][1]
    if status == "complete":  # saved whole before its worker died: nothing was lost
        assert saved.startswith(longest), (what, status, len(saved), len(longest))
    else:
        assert saved == longest, (what, status, len(saved), len(longest))
    dones = {f.seen.done["status"] for f in followers if f.seen.done is not None}
    assert dones <= {status}, (what, dones, status)


@contextmanager
def chat_on(base_url: str, client: httpx.Client, message: str) -> Iterator[Follower]:
    chat = Follower(base_url, client=client, chat={"message": message})
    chat.start()
    yield chat


def test_kill_9_of_the_owning_worker_never_shortens_the_answer(
    workers: WorkersFactory, fake: FakeUpstreamThread, shared_database: str
) -> None:
    server = workers(run_lease_s="1", checkpoint_interval_s="0.05")
    chance = random.Random(int(os.environ.get("CHATSTREAM_TEST_SEED", time.time_ns())))
    for kill in range(1, KILLS + 1):
        wait_until(lambda: len(server.current()) == 2, what="both workers serve", timeout=60)
        with ExitStack() as stack:
            client, victim = stack.enter_context(client_on(server.base_url, anyone))
            runs: list[tuple[str, Follower, Follower]] = []
            for phase, (directive, _) in PHASES.items():
                # One connection per stream, each to the worker wanted.
                if runs:
                    client, _ = stack.enter_context(client_on(server.base_url, exactly(victim)))
                chat = Follower(server.base_url, client=client, chat={"message": f"{directive} x"})
                chat.start()
                assert chat.started_run.wait(30), (phase, chat.seen.failure)
                there, _ = stack.enter_context(client_on(server.base_url, other_than(victim)))
                # The other worker's follower, from the start, once that worker knows the run.
                wait_until(
                    lambda c=chat, t=there: last_seq(t.get(f"/api/runs/{c.message_id}")) >= 1,
                    what="the other worker knows the run",
                )
                remote = Follower(server.base_url, client=there, message_id=chat.message_id)
                remote.start()
                runs.append((phase, chat, remote))
            for phase, chat, _ in runs:
                reached = PHASES[phase][1]
                if reached is None:
                    deltas = chance.randint(1, 60)
                    chat.wait_for(f"{deltas} deltas", lambda s, n=deltas: count(s, "delta") >= n)
                else:
                    chat.wait_for(phase, reached)
            killed = server.current()[victim]
            os.kill(killed.pid, signal.SIGKILL)
            for phase, chat, remote in runs:
                assert_nothing_lost(shared_database, [chat, remote], f"kill {kill}, {phase}")
        wait_until(
            lambda v=victim, k=killed.pid: server.current()[v].pid != k,
            what=f"worker {killed.index} replaced",
            timeout=60,
        )
        fake.fake.release()  # the stalled streams of runs already ended


def test_a_hung_worker_is_found_replaced_and_its_runs_ended(
    workers: WorkersFactory, shared_database: str
) -> None:
    server = workers(run_lease_s="1", worker_heartbeat_timeout_s="1.5")
    with (
        client_on(server.base_url, anyone) as (client, victim),
        client_on(server.base_url, other_than(victim)) as (survivor, _),
        chat_on(server.base_url, client, "[[fake tokens=2000 interval_ms=5]] x") as chat,
    ):
        chat.wait_for("some text", lambda s: count(s, "delta") >= 5)
        assert chat.message_id is not None
        remote = Follower(server.base_url, message_id=chat.message_id)
        remote.start()
        remote.wait_for("some text", lambda s: count(s, "delta") >= 5)
        hung = server.current()[victim]
        os.kill(hung.pid, signal.SIGSTOP)  # alive, its loop stopped: no exit to notice
        server.wait_for_line(f"worker {hung.index} stopped answering (no heartbeat for")
        server.wait_for_line(f"worker {hung.index} exited unexpectedly (pid {hung.pid}, killed by")
        assert_nothing_lost(shared_database, [chat, remote], "hung worker")
        assert remote.seen.done is not None and remote.seen.done["status"] == "interrupted"
        wait_until(lambda: server.current()[victim].pid != hung.pid, what="replaced", timeout=60)
        assert survivor.get("/readyz").status_code == 200


def test_a_woken_stale_owner_never_overwrites_a_run_taken_over(
    fleet: FleetFactory, shared_database: str, redis_url: str
) -> None:
    stale = fleet("a", run_lease_s="1")
    taker = fleet("b", run_lease_s="1")
    with httpx.Client(base_url=stale.base_url, timeout=30) as client:
        with chat_on(stale.base_url, client, "[[fake tokens=3000 interval_ms=5]] x") as chat:
            chat.wait_for("some text", lambda s: count(s, "delta") >= 5)
            remote = Follower(taker.base_url, message_id=chat.message_id)
            remote.start()
            remote.wait_for("some text", lambda s: count(s, "delta") >= 5)
            os.kill(stale.process.pid, signal.SIGSTOP)
            try:
                remote.join(30)
                assert remote.seen.done is not None, remote.seen.failure
                assert remote.seen.done["status"] == "interrupted"
                ended_at = last_seq(httpx.get(f"{taker.base_url}/api/runs/{chat.message_id}"))
            finally:
                os.kill(stale.process.pid, signal.SIGCONT)
            # Woken, the stale owner goes on streaming from its upstream for a moment:
            # none of it reaches Redis, and its own follower gets the taker's end.
            stale.wait_for_line("was taken over by another instance")
            chat.join(30)
        assert_nothing_lost(shared_database, [chat, remote], "stale owner")
        assert chat.seen.done == remote.seen.done
        assert chat.seen.ids[-1] == remote.seen.ids[-1] == ended_at
        for instance in (stale, taker):
            state = httpx.get(f"{instance.base_url}/api/runs/{chat.message_id}").json()
            assert (state["status"], state["last_seq"]) == ("interrupted", ended_at), instance


def test_every_instance_says_a_run_ended_once_a_client_has_its_done(
    workers: WorkersFactory,
) -> None:
    server = workers()
    with (
        client_on(server.base_url, anyone) as (client, owner),
        client_on(server.base_url, other_than(owner)) as (other, _),
    ):
        for attempt in range(10):
            with chat_on(server.base_url, client, f"[[fake tokens={5 + attempt}]] x") as chat:
                chat.join(30)
                assert chat.seen.done is not None, chat.seen.failure
            for instance_client in (client, other):
                answer = instance_client.get(f"/api/runs/{chat.message_id}")
                assert answer.status_code == 200, answer.text
                assert answer.json()["status"] == "complete", (attempt, answer.headers[INSTANCE])
