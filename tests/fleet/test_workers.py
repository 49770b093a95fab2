"""`chatstream serve --workers 2`: two processes on one socket are two instances of one service.

Real processes (`python -m chatstream serve --workers 2`) on a fresh
PostgreSQL database and the shared Redis. The kernel hands each connection to
one worker; a test finds the worker it wants by connecting until the answer's
X-Chatstream-Instance header names it, then keeps using that connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url
from websockets.sync.client import ClientConnection

from tests.fleet.conftest import WorkersFactory, last_seq
from tests.support.process import clean_env, free_port
from tests.support.prometheus import Scrape, parse
from tests.support.servers import FakeUpstreamThread
from tests.support.sse import Stream, iter_sse, read_stream
from tests.support.wait import wait_until
from tests.support.ws import dones, open_socket_at, recv, recv_until, send

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
log = logging.getLogger(__name__)

INSTANCE = "x-chatstream-instance"
MODEL = "test-model"
Wanted = Callable[[str], bool]


def anyone(instance: str) -> bool:
    return True


def other_than(instance: str) -> Wanted:
    return lambda candidate: candidate != instance


def exactly(instance: str) -> Wanted:
    return lambda candidate: candidate == instance


@contextmanager
def client_on(base_url: str, wanted: Wanted) -> Iterator[tuple[httpx.Client, str]]:
    """A client whose kept-alive connection is served by a worker `wanted` accepts."""
    deadline = time.monotonic() + 30
    while True:
        with httpx.Client(base_url=base_url, timeout=30) as client:
            instance = client.get("/healthz").headers[INSTANCE]
            if wanted(instance):
                yield client, instance
                return
        assert time.monotonic() < deadline, "no connection reached the worker wanted"


def socket_on(ws_url: str, wanted: Wanted) -> ClientConnection:
    """A WebSocket that a worker `wanted` accepts serves."""
    deadline = time.monotonic() + 30
    while True:
        ws = open_socket_at(ws_url)
        assert ws.response is not None
        if wanted(ws.response.headers[INSTANCE]):
            return ws  # the caller enters it: `with socket_on(…) as ws`
        with ws:  # closed the way websockets wants a connection closed
            pass
        assert time.monotonic() < deadline, "no WebSocket reached the worker wanted"


@contextmanager
def streaming(client: httpx.Client, message: str, instance: str) -> Iterator[Iterator[Any]]:
    """A chat on `client`'s worker: its SSE events as they come."""
    with client.stream("POST", "/api/chat/stream", json={"message": message}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers[INSTANCE] == instance
        yield iter_sse(response)


def follow_on(base_url: str, wanted: Wanted, message_id: str, **headers: str) -> tuple[str, Stream]:
    with (
        client_on(base_url, wanted) as (client, instance),
        client.stream("GET", f"/api/runs/{message_id}/events", headers=headers) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers[INSTANCE] == instance
        return instance, read_stream(response)


def scrape_on(client: httpx.Client, instance: str) -> Scrape:
    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.headers[INSTANCE] == instance
    return parse(answer.text)


def assistant_rows(database_url: str, session_id: str) -> list[tuple[str, str, str]]:
    """(id, status, content) of a session's assistant messages, read from PostgreSQL itself."""
    plain = make_url(database_url).set(drivername="postgresql")

    async def query() -> list[tuple[str, str, str]]:
        connection = await asyncpg.connect(plain.render_as_string(hide_password=False))
        try:
            rows = await connection.fetch(
                "SELECT id, status, content FROM messages "
                "WHERE session_id = $1 AND role = 'assistant' ORDER BY pk",
                uuid.UUID(session_id),
            )
        finally:
            await connection.close()
        return [(str(r["id"]), r["status"], r["content"]) for r in rows]

    return asyncio.run(query())


def test_two_workers_serve_chats_as_two_instances(workers: WorkersFactory, tmp_path: Path) -> None:
    server = workers()
    ready = server.current()
    assert sorted(info.index for info in ready.values()) == [1, 2]
    spools = tmp_path / "workers" / "spool"
    for info in ready.values():
        # Each worker's own spool, the same directory for the same worker after a restart.
        assert (spools / f"worker-{info.index}" / "instance").read_text().strip() == info.instance
    for instance in ready:
        with client_on(server.base_url, exactly(instance)) as (client, _):
            readiness = client.get("/readyz")
            assert readiness.status_code == 200
            assert readiness.json()["instance"] == readiness.headers[INSTANCE] == instance
            answer = client.post("/api/chat", json={"message": "[[fake tokens=3]] hi"})
            assert answer.status_code == 200 and answer.headers[INSTANCE] == instance
            assert answer.json()["message"]["status"] == "complete"


def test_a_run_is_followed_and_resumed_from_the_other_worker(
    workers: WorkersFactory, fake: FakeUpstreamThread
) -> None:
    server = workers()
    with (
        client_on(server.base_url, anyone) as (client, first),
        streaming(client, "[[fake tokens=20 stall_after=8]] hi", first) as events,
    ):
        head = read_stream(events, stop_after=6)
        message_id = head.events[0].data["message_id"]
        with ThreadPoolExecutor(max_workers=1) as pool:
            later = pool.submit(
                follow_on, server.base_url, other_than(first), message_id, **{"Last-Event-ID": "4"}
            )
            with socket_on(server.ws_url, other_than(first)) as ws:
                send(ws, {"type": "resume", "message_id": message_id, "after": 5})
                first_frame = recv(ws)
                fake.fake.release(wait_for=1)
                frames = [first_frame, *recv_until(ws, lambda fs: dones(fs) == 1)]
            seen_first = Stream(events=head.events + read_stream(events).events)
            follower, seen_later = later.result(timeout=30)
    assert follower != first
    assert seen_first.types[-1] == "done" and seen_first.done["status"] == "complete"
    # Exactly the later events, then live, done last: SSE after id 4, WebSocket after seq 5.
    assert [e.id for e in seen_later.events] == [e.id for e in seen_first.events[4:]]
    assert [e.data for e in seen_later.events] == [e.data for e in seen_first.events[4:]]
    assert [f["seq"] for f in frames] == [e.id for e in seen_first.events[5:]]
    assert [f["type"] for f in frames] == [e.type for e in seen_first.events[5:]]


def test_a_cancel_from_the_other_worker_ends_the_run_at_once(
    workers: WorkersFactory, fake: FakeUpstreamThread, shared_database: str
) -> None:
    server = workers()
    ended_at: list[float] = []
    rest: list[Stream] = []
    with (
        client_on(server.base_url, anyone) as (client, owner),
        client_on(server.base_url, other_than(owner)) as (other, canceller),
        streaming(client, "[[fake tokens=20 stall_after=4]] hold", owner) as events,
    ):
        head = read_stream(events, stop_after=5)
        message_id = head.events[0].data["message_id"]

        def read_rest() -> None:
            rest.append(read_stream(events))
            ended_at.append(time.monotonic())

        reader = threading.Thread(target=read_rest)
        reader.start()
        assert other.get(f"/api/runs/{message_id}").json()["status"] == "running"
        asked_at = time.monotonic()
        accepted = other.post(f"/api/runs/{message_id}/cancel")
        reader.join(30)
    assert (accepted.status_code, accepted.headers[INSTANCE]) == (202, canceller)
    took = ended_at[0] - asked_at
    log.info("cancel from worker %s to done on worker %s: %.1f ms", canceller, owner, took * 1000)
    assert took < 0.1, f"{took * 1000:.0f} ms"  # as from another instance (contract §6)
    done = rest[0].done
    assert (done["status"], done["persisted"]) == ("cancelled", True)
    session_id = head.events[0].data["session_id"]
    assert assistant_rows(shared_database, session_id) == [
        (message_id, "cancelled", head.text + rest[0].text)
    ]


def test_a_scrape_of_either_worker_covers_both(
    workers: WorkersFactory, fake: FakeUpstreamThread
) -> None:
    server = workers()
    with (
        client_on(server.base_url, anyone) as (on_a, a),
        client_on(server.base_url, other_than(a)) as (on_b, b),
        client_on(server.base_url, exactly(a)) as (scrape_a, _),
        client_on(server.base_url, exactly(b)) as (scrape_b, _),
    ):
        for client, instance, runs in ((on_a, a, 2), (on_b, b, 1)):
            for _ in range(runs):
                with streaming(client, "[[fake tokens=3]] quick", instance) as events:
                    assert read_stream(events).done["status"] == "complete"
        for scraper, instance in ((scrape_a, a), (scrape_b, b)):
            metrics = scrape_on(scraper, instance)
            # 2 runs on one worker and 1 on the other: 3 from either.
            assert metrics.value("chatstream_runs_total", model=MODEL, status="complete") == 3
            assert metrics.value("chatstream_tokens_total", model=MODEL, type="completion") == 9
            assert (
                metrics.value(
                    "chatstream_http_requests_total",
                    method="POST",
                    route="/api/chat/stream",
                    status="200",
                )
                == 3
            )
        # Live runs: one on each worker, summed over the live workers.
        with (
            streaming(on_a, "[[fake tokens=5 stall_after=1]] a", a) as held_a,
            streaming(on_b, "[[fake tokens=5 stall_after=1]] b", b) as held_b,
        ):
            read_stream(held_a, stop_after=2)
            read_stream(held_b, stop_after=2)
            assert scrape_on(scrape_a, a).value("chatstream_runs_active") == 2
            assert scrape_on(scrape_b, b).value("chatstream_runs_active") == 2
            fake.fake.release(wait_for=2)
            assert read_stream(held_a).done["status"] == "complete"
            assert read_stream(held_b).done["status"] == "complete"
        wait_until(lambda: scrape_on(scrape_b, b).value("chatstream_runs_active") == 0)
        assert (
            scrape_on(scrape_a, a).value("chatstream_runs_total", model=MODEL, status="complete")
            == 5
        )


def test_sigterm_to_the_parent_drains_the_runs_of_every_worker(
    workers: WorkersFactory, fake: FakeUpstreamThread, shared_database: str, tmp_path: Path
) -> None:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    server = workers(shutdown_grace_s="0.5", env={"TMPDIR": str(temporary)})
    (metrics_dir,) = temporary.iterdir()  # made by the parent, shared by the workers
    assert metrics_dir.name.startswith("chatstream-metrics-")
    seen: dict[str, Stream] = {}
    with (
        client_on(server.base_url, anyone) as (on_a, a),
        client_on(server.base_url, other_than(a)) as (on_b, b),
        streaming(on_a, "[[fake tokens=9 stall_after=2]] a", a) as events_a,
        streaming(on_b, "[[fake tokens=9 stall_after=2]] b", b) as events_b,
    ):
        heads = {a: read_stream(events_a, stop_after=3), b: read_stream(events_b, stop_after=3)}
        server.process.send_signal(signal.SIGTERM)
        for instance, events in ((a, events_a), (b, events_b)):
            seen[instance] = Stream(events=heads[instance].events + read_stream(events).events)
    assert server.process.wait(30) == 0
    for stream in seen.values():
        assert stream.types[-2:] == ["error", "done"]
        error = stream.of("error")[0].data
        assert (error["code"], error["retryable"]) == ("server_shutdown", True)
        assert (stream.done["status"], stream.done["persisted"]) == ("interrupted", True)
        session_id = stream.events[0].data["session_id"]
        assert assistant_rows(shared_database, session_id) == [
            (stream.done["message_id"], "interrupted", stream.text)
        ]
    text = server.log_text()
    assert "worker 1 stopped" in text and "worker 2 stopped" in text
    assert "killing" not in text and "starting it again" not in text
    assert not list(temporary.iterdir())  # its metrics directory went with it


def test_workers_without_redis_refuse_to_start(tmp_path: Path) -> None:
    env = clean_env(
        CHATSTREAM_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/chatstream.db",
        CHATSTREAM_SPOOL_DIR=str(tmp_path / "spool"),
        CHATSTREAM_PORT=str(free_port()),
    )
    done = subprocess.run(
        [sys.executable, "-m", "chatstream", "serve", "--workers", "2"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "chatstream: --workers 2 needs CHATSTREAM_REDIS_URL: the workers share runs, limits and "
        "the run cap through Redis; set it (redis://host:6379/0), or serve with one process"
    ]
    assert not (tmp_path / "chatstream.db").exists()  # refused before anything was touched


def test_a_worker_that_cannot_start_stops_the_server_with_its_reason(
    workers: WorkersFactory,
) -> None:
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    server = workers(wait=False, redis_url=unreachable)
    code = server.process.wait(60)
    assert code == 3
    lines = server.log_text().splitlines()
    reason = [line for line in lines if line.startswith("chatstream: ")]
    assert len(reason) == 1, lines
    assert reason[0].startswith("chatstream: worker ")
    assert "could not start: Redis at 127.0.0.1:" in reason[0]
    assert "Traceback" not in server.log_text()
    # Not restarted: each worker started once at most.
    assert sum("Started server process" in line for line in lines) <= 2


def test_a_killed_worker_is_replaced_and_its_run_ended_by_the_other(
    workers: WorkersFactory, fake: FakeUpstreamThread, shared_database: str, tmp_path: Path
) -> None:
    server = workers(run_lease_s="1.5", checkpoint_interval_s="0.05")
    with (
        client_on(server.base_url, anyone) as (client, victim),
        client_on(server.base_url, other_than(victim)) as (survivor_client, survivor),
        streaming(client, "[[fake tokens=20 stall_after=7]] x", victim) as events,
    ):
        head = read_stream(events, stop_after=8)
        message_id = head.events[0].data["message_id"]
        session_id = head.events[0].data["session_id"]
        with ThreadPoolExecutor(max_workers=1) as pool:
            following = pool.submit(follow_on, server.base_url, exactly(survivor), message_id)
            wait_until(
                lambda: last_seq(survivor_client.get(f"/api/runs/{message_id}")) >= 8,
                what="the other worker sees the run's events",
            )
            killed = server.current()[victim]
            # Its checkpoint, in its own spool: what its replacement will find there.
            live = tmp_path / "workers" / "spool" / f"worker-{killed.index}" / "live.json"
            wait_until(lambda: checkpointed(live, message_id), what="the run's checkpoint")
            killed_at = time.monotonic()
            os.kill(killed.pid, signal.SIGKILL)
            _, seen = following.result(timeout=30)
        took = time.monotonic() - killed_at
    assert seen.types[-2:] == ["error", "done"]
    assert seen.of("error")[0].data["code"] == "server_shutdown"
    assert (seen.done["status"], seen.done["persisted"]) == ("interrupted", True)
    assert took < 1.5 + 2.0, took  # within the lease (and a sweep)
    assert assistant_rows(shared_database, session_id) == [(message_id, "interrupted", seen.text)]
    # Replaced, as the same instance (its spool), which finds the run written and
    # writes nothing twice.
    server.wait_for_line(
        f"worker {killed.index} exited unexpectedly (pid {killed.pid}, killed by SIGKILL)"
    )
    wait_until(lambda: server.current()[victim].pid != killed.pid, timeout=30)
    with client_on(server.base_url, exactly(victim)) as (replacement, _):
        assert replacement.get("/readyz").json()["instance"] == victim
    server.wait_for_line("recovered 1 run(s) interrupted by the last stop")
    assert not checkpointed(live, message_id)
    assert assistant_rows(shared_database, session_id) == [(message_id, "interrupted", seen.text)]
    assert len(server.current()) == 2


def test_workers_stop_by_themselves_when_the_parent_is_gone(workers: WorkersFactory) -> None:
    server = workers()
    pids = [info.pid for info in server.current().values()]
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)
    wait_until(lambda: not any(running(pid) for pid in pids), timeout=30, what="workers gone")
    assert "the supervisor process is gone: stopping" in server.log_text()


def checkpointed(live: Path, message_id: str) -> bool:
    """The run's text so far is in this spool's checkpoint file (chatstream.durability.spool)."""
    try:
        return any(
            output["rows"][-1]["id"] == message_id for output in json.loads(live.read_text())
        )
    except FileNotFoundError:
        return False


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whoever adopted it to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
