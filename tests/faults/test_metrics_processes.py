"""Several `chatstream serve` processes, one metrics directory: a scrape of any covers all.

What `serve --workers N` will do, done here by hand: two real processes on
their own ports, sharing one SQLite database and one CHATSTREAM_METRICS_DIR.
"""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.faults.conftest import ServeFactory
from tests.support.process import ServeProcess
from tests.support.prometheus import Scrape, scrape
from tests.support.servers import FakeUpstreamThread
from tests.support.sse import SSEEvent, Stream, iter_sse, read_stream
from tests.support.wait import wait_until

MODEL = "test-model"


class OpenStream:
    def __init__(self, server: ServeProcess, message: str) -> None:
        self._client = httpx.Client(base_url=server.base_url, timeout=30)
        self._context = self._client.stream("POST", "/api/chat/stream", json={"message": message})
        response = self._context.__enter__()
        assert response.status_code == 200
        self._items: Iterator[SSEEvent | str] = iter_sse(response)
        self.seen = read_stream(self._items, stop_after=2)  # start, and the first text

    def finish(self) -> Stream:
        self.seen.events.extend(read_stream(self._items).events)
        self.close()
        return self.seen

    def close(self) -> None:
        self._context.__exit__(None, None, None)
        self._client.close()


def chat(server: ServeProcess, message: str) -> dict[str, Any]:
    with (
        httpx.Client(base_url=server.base_url, timeout=30) as client,
        client.stream("POST", "/api/chat/stream", json={"message": message}) as answer,
    ):
        assert answer.status_code == 200
        return read_stream(answer).done


def runs(metrics: Scrape, status: str) -> float:
    return metrics.value("chatstream_runs_total", model=MODEL, status=status)


def test_a_scrape_of_either_process_covers_both(
    serve: ServeFactory, fake: FakeUpstreamThread, tmp_path: Path, database_file: Path
) -> None:
    shared = str(tmp_path / "metrics")
    a = serve(metrics_dir=shared)
    b = serve(
        metrics_dir=shared, spool_dir=str(tmp_path / "spool-b"), database_busy_timeout_s="0.3"
    )
    dones = [chat(a, "[[fake tokens=3]] a1"), chat(a, "[[fake tokens=5]] a2")]
    dones.append(chat(b, "[[fake tokens=4]] b1"))
    dones.append(chat(b, "[[fake status=500]] b2"))

    for server in (a, b):
        metrics = scrape(server.base_url)
        assert runs(metrics, "complete") == 3
        assert runs(metrics, "error") == 1
        assert metrics.value("chatstream_upstream_errors_total", code="upstream_error") == 1
        ttfts = [d["metrics"]["ttft_ms"] for d in dones if d["metrics"]["ttft_ms"] is not None]
        ttft = "chatstream_time_to_first_token_seconds"
        assert metrics.value(f"{ttft}_count", model=MODEL) == len(ttfts) == 3
        assert abs(metrics.value(f"{ttft}_sum", model=MODEL) - sum(ttfts) / 1000) < 1e-6
        assert metrics.value(f"{ttft}_bucket", model=MODEL, le="+Inf") == 3
        completion = sum(d["usage"]["completion_tokens"] for d in dones if d["usage"])
        assert (
            metrics.value("chatstream_tokens_total", model=MODEL, type="completion") == completion
        )
        assert (
            metrics.value(
                "chatstream_http_requests_total",
                method="POST",
                route="/api/chat/stream",
                status="200",
            )
            == 4
        )
        assert metrics.value("chatstream_spool_pending") == 0

    # Live runs: the sum over the live processes.
    stuck = [OpenStream(server, "[[fake tokens=9 stall_after=1]] x") for server in (a, b)]
    assert scrape(a.base_url).value("chatstream_runs_active") == 2
    assert scrape(b.base_url).value("chatstream_runs_active") == 2
    fake.fake.release(wait_for=2)
    assert [s.finish().done["status"] for s in stuck] == ["complete", "complete"]
    assert scrape(b.base_url).value("chatstream_runs_active") == 0
    assert runs(scrape(a.base_url), "complete") == 5

    # The spool: an answer B could not write (the database is locked), seen from A.
    spooled = OpenStream(b, "[[fake tokens=6 stall_after=2]] spooled")
    lock = sqlite3.connect(database_file, timeout=10, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        fake.fake.release(wait_for=1)
        assert spooled.finish().done["persisted"] is False
        assert scrape(b.base_url).value("chatstream_spool_pending") == 1  # B counts its own
        assert scrape(a.base_url).value("chatstream_spool_pending") == 1
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    wait_until(lambda: scrape(b.base_url).value("chatstream_spool_pending") == 0, timeout=30)
    assert scrape(a.base_url).value("chatstream_spool_pending") == 0

    # A clean stop: the process's live figures go, its counts stay.
    assert b.stop() in (0, -signal.SIGTERM)
    assert not list(Path(shared).glob(f"gauge_live*_{b.process.pid}.db"))
    metrics = scrape(a.base_url)
    assert runs(metrics, "complete") == 6 and runs(metrics, "error") == 1


def test_a_process_that_died_stops_counting_as_live(
    serve: ServeFactory, fake: FakeUpstreamThread, tmp_path: Path
) -> None:
    shared = tmp_path / "metrics"
    b = serve(metrics_dir=str(shared), spool_dir=str(tmp_path / "spool-b"))
    chat(b, "[[fake tokens=3]] before")
    stuck = OpenStream(b, "[[fake tokens=9 stall_after=1]] b")
    assert scrape(b.base_url).value("chatstream_runs_active") == 1
    b.process.send_signal(signal.SIGKILL)
    b.process.wait(30)
    stuck.close()
    # Nobody has noticed yet: its live gauge is still in the directory.
    assert list(shared.glob(f"gauge_livesum_{b.process.pid}.db"))
    # A process that starts notices (as the parent of `serve --workers N` does
    # when a worker exits, with `process_exited`).
    c = serve(metrics_dir=str(shared), spool_dir=str(tmp_path / "spool-c"))
    metrics = scrape(c.base_url)
    assert metrics.value("chatstream_runs_active") == 0
    assert runs(metrics, "complete") == 1  # its counts stay in the sum
    assert not list(shared.glob(f"gauge_live*_{b.process.pid}.db"))
