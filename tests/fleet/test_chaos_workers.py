"""Chaos across processes: `serve --workers 2`, a hundred runs, workers killed and paused,
Redis restarted, and nothing any client saw lost, nothing left behind.

The runs come in waves of ten, each wave meeting one fault (seeded, so every run
of the suite draws the same, unless CHATSTREAM_TEST_SEED says otherwise): a
kill -9 of a worker, a SIGSTOP of one (its supervisor finds it silent and
replaces it), a restart of Redis (emptied: it keeps nothing), or nothing. Every
run has a follower on each worker; every one is checked as in
test_nothing_lost.py. This test restarts a Redis of its own, never the machine's.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis

from tests.fleet.conftest import WorkersFactory, last_seq
from tests.fleet.followers import Follower
from tests.fleet.test_nothing_lost import assert_nothing_lost, count
from tests.fleet.test_workers import anyone, client_on, exactly, other_than
from tests.support.prometheus import parse
from tests.support.redis_server import RedisServer
from tests.support.servers import FakeUpstreamThread
from tests.support.wait import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

WAVES = 10
RUNS_PER_WAVE = 10
FAULTS = ("kill", "stop", "redis", "none")


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(private_redis: RedisServer) -> str:
    """The fleet fixtures' Redis, for this module: the private one."""
    return private_redis.url


def test_a_hundred_runs_through_kills_pauses_and_redis_restarts(
    workers: WorkersFactory,
    private_redis: RedisServer,
    fake: FakeUpstreamThread,
    shared_database: str,
) -> None:
    server = workers(
        run_lease_s="1", worker_heartbeat_timeout_s="1.5", checkpoint_interval_s="0.05"
    )
    chance = random.Random(int(os.environ.get("CHATSTREAM_TEST_SEED", "20261207")))
    faults = [FAULTS[wave % len(FAULTS)] for wave in range(WAVES)]
    chance.shuffle(faults)
    for wave, fault in enumerate(faults):
        wait_until(lambda: len(server.current()) == 2, what="both workers serve", timeout=60)
        before = dict(server.current())
        with ExitStack() as stack:
            runs: list[tuple[Follower, Follower]] = []
            for n in range(RUNS_PER_WAVE):
                client, owner = stack.enter_context(client_on(server.base_url, anyone))
                if chance.random() < 0.3:
                    directive = "[[fake tool=get_current_time preamble=3 tokens=60 interval_ms=6]]"
                else:
                    tokens, interval = chance.randint(60, 250), chance.randint(3, 8)
                    directive = f"[[fake tokens={tokens} interval_ms={interval}]]"
                chat = Follower(
                    server.base_url, client=client, chat={"message": f"{directive} {n}"}
                )
                chat.start()
                assert chat.started_run.wait(30), chat.seen.failure
                there, _ = stack.enter_context(client_on(server.base_url, other_than(owner)))
                wait_until(
                    lambda c=chat, t=there: last_seq(t.get(f"/api/runs/{c.message_id}")) >= 1,
                    what="the other worker knows the run",
                )
                remote = Follower(server.base_url, client=there, message_id=chat.message_id)
                remote.start()
                runs.append((chat, remote))
            for chat, _ in runs:
                chat.wait_for("a few deltas", lambda s: count(s, "delta") >= 3 or s.done)
            victim = chance.choice(sorted(before))
            if fault == "kill":
                os.kill(before[victim].pid, signal.SIGKILL)
            elif fault == "stop":
                os.kill(before[victim].pid, signal.SIGSTOP)
            elif fault == "redis":
                private_redis.stop()
                private_redis.start()  # empty: it keeps nothing
            for chat, remote in runs:
                assert_nothing_lost(shared_database, [chat, remote], f"wave {wave} ({fault})")
        if fault in ("kill", "stop"):
            wait_until(
                lambda v=victim, p=before[victim].pid: server.current()[v].pid != p,
                what=f"wave {wave}: the {fault} worker replaced",
                timeout=60,
            )

    # Nothing left behind: no live run on either worker, no upstream stream open,
    # every key in Redis expiring.
    wait_until(lambda: len(server.current()) == 2, what="both workers serve", timeout=60)
    for instance in server.current():
        with client_on(server.base_url, exactly(instance)) as (client, _):
            wait_until(
                lambda c=client: parse(c.get("/metrics").text).value("chatstream_runs_active") == 0,
                what="no run live",
            )
    fake.fake.wait_for(lambda: fake.fake.active_streams == 0)
    client = redis.Redis.from_url(private_redis.url)
    keys = list(client.scan_iter(count=1000))
    without_expiry = [key for key in keys if client.ttl(key) < 0]
    client.close()
    assert not without_expiry, without_expiry
