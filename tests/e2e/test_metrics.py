"""`GET /metrics`: every figure of contract §7, each moved by exactly what happened."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatstream.metrics.collectors import TTFT_BUCKETS
from tests.support.prometheus import parse, scrape
from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.sse import SSEEvent, Stream, iter_sse, read_stream
from tests.support.wait import wait_until

CONTRACT_FAMILIES = {
    "chatstream_runs": "counter",
    "chatstream_runs_active": "gauge",
    "chatstream_time_to_first_token_seconds": "histogram",
    "chatstream_run_duration_seconds": "histogram",
    "chatstream_tokens": "counter",
    "chatstream_upstream_errors": "counter",
    "chatstream_rejected": "counter",
    "chatstream_spool_pending": "gauge",
    "chatstream_http_requests": "counter",
    "chatstream_http_request_duration_seconds": "histogram",
}
MODEL = "test-model"
TTFT = "chatstream_time_to_first_token_seconds"
DURATION = "chatstream_run_duration_seconds"


class OpenStream:
    """An SSE chat stream held open while the test does other things."""

    def __init__(self, client: httpx.Client, body: dict[str, Any], **kwargs: Any) -> None:
        self._context = client.stream("POST", "/api/chat/stream", json=body, **kwargs)
        self.response = self._context.__enter__()
        assert self.response.status_code == 200, self.response.read()
        self._items: Iterator[SSEEvent | str] = iter_sse(self.response)
        self.seen = Stream()

    def read(self, events: int | None = None) -> Stream:
        more = read_stream(self._items, stop_after=events)
        self.seen.events.extend(more.events)
        if events is None:
            self._context.__exit__(None, None, None)
        return self.seen


def chat(client: httpx.Client, message: str, **kwargs: Any) -> Stream:
    with client.stream("POST", "/api/chat/stream", json={"message": message}, **kwargs) as answer:
        assert answer.status_code == 200, answer.read()
        return read_stream(answer)


def refused(client: httpx.Client, message: str, **kwargs: Any) -> tuple[int, str]:
    answer = client.post("/api/chat/stream", json={"message": message}, **kwargs)
    return answer.status_code, answer.json()["error"]["code"]


def test_every_metric_of_the_contract_is_exposed(server: AppServer) -> None:
    answer = httpx.get(f"{server.base_url}/metrics", timeout=20)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    metrics = parse(answer.text)
    for family, kind in CONTRACT_FAMILIES.items():
        assert metrics.families.get(family) == kind, family
    # Before anything happened every known series is there, at zero.
    for status in ("complete", "cancelled", "error", "interrupted"):
        assert metrics.has("chatstream_runs_total", model=MODEL, status=status)
    for code in ("rate_limited", "too_many_runs", "server_shutdown"):
        assert metrics.has("chatstream_rejected_total", code=code)
    assert metrics.value("chatstream_runs_active") == 0
    assert metrics.value("chatstream_spool_pending") == 0
    # Time to first token: buckets from milliseconds to minutes.
    edges = {float(le) for le in metrics.label_values(f"{TTFT}_bucket", "le")}
    assert min(edges) <= 0.01 and 120 <= max(edges - {float("inf")}) <= 600
    assert edges == {*TTFT_BUCKETS, float("inf")}


def test_openmetrics_when_the_scraper_asks_for_it(server: AppServer) -> None:
    answer = httpx.get(
        f"{server.base_url}/metrics",
        headers={"accept": "application/openmetrics-text; version=1.0.0"},
        timeout=20,
    )
    assert answer.headers["content-type"].startswith("application/openmetrics-text")
    assert answer.text.rstrip().endswith("# EOF")


def test_each_figure_moves_by_exactly_what_happened(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread
) -> None:
    # One caller (by its forwarded address), allowed six chats a minute and two at once.
    server = make_server(
        rate_limit="6/minute", max_concurrent_runs=2, trusted_proxies=["127.0.0.1"]
    )
    alice = {"x-forwarded-for": "203.0.113.1"}
    bob = {"x-forwarded-for": "203.0.113.2"}
    before = scrape(server.base_url)
    runs: list[Stream] = []
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        # Two complete answers; the first checked on its own against its `done`.
        runs.append(chat(client, "[[fake tokens=4 first_token_ms=40]] one", headers=alice))
        first = scrape(server.base_url)
        ttft_ms = runs[0].done["metrics"]["ttft_ms"]
        assert ttft_ms >= 40
        assert first.minus(before, f"{TTFT}_count", model=MODEL) == 1
        assert first.minus(before, f"{TTFT}_sum", model=MODEL) == pytest.approx(ttft_ms / 1000)
        assert first.minus(before, f"{DURATION}_sum", model=MODEL) == pytest.approx(
            runs[0].done["metrics"]["duration_ms"] / 1000
        )
        runs.append(chat(client, "[[fake tokens=7]] two", headers=alice))
        # An upstream failure.
        runs.append(chat(client, "[[fake status=500]] three", headers=alice))
        assert runs[-1].done["status"] == "error"
        assert runs[-1].of("error")[0].data["code"] == "upstream_error"
        # A cancel, mid-answer.
        cancelled = OpenStream(
            client, {"message": "[[fake tokens=30 stall_after=2]] four"}, headers=alice
        )
        head = cancelled.read(3)  # start, delta, delta
        message_id = head.events[0].data["message_id"]
        assert client.post(f"/api/runs/{message_id}/cancel", headers=alice).status_code == 202
        runs.append(cancelled.read())
        assert runs[-1].done["status"] == "cancelled"
        # Two stuck mid-answer: live, and the caller's two-at-once cap is reached.
        stuck = [
            OpenStream(client, {"message": f"[[fake tokens=30 stall_after=1]] {n}"}, headers=alice)
            for n in (5, 6)
        ]
        for stream in stuck:
            stream.read(2)  # start, delta
        assert scrape(server.base_url).value("chatstream_runs_active") == 2
        assert refused(client, "seven", headers=alice) == (429, "too_many_runs")
        # Shutdown: the stuck runs are interrupted; the caller's slots come back.
        server.call(lambda: server.state.registry.shutdown(0))
        runs.extend(stream.read() for stream in stuck)
        assert [s.done["status"] for s in runs[-2:]] == ["interrupted", "interrupted"]
        # Six chats started this minute: the window is full.
        assert refused(client, "eight", headers=alice) == (429, "rate_limited")
        # Another caller, with room in every limit, meets the shutdown.
        assert refused(client, "nine", headers=bob) == (503, "server_shutdown")
    after = scrape(server.base_url)

    def moved(name: str, **labels: str) -> float:
        return after.minus(before, name, **labels)

    statuses = [run.done["status"] for run in runs]
    for status in ("complete", "cancelled", "error", "interrupted"):
        assert moved("chatstream_runs_total", model=MODEL, status=status) == statuses.count(
            status
        ), status
    assert statuses.count("complete") == 2 and statuses.count("interrupted") == 2
    assert after.value("chatstream_runs_active") == 0
    assert moved("chatstream_upstream_errors_total", code="upstream_error") == 1
    assert moved("chatstream_upstream_errors_total", code="upstream_timeout") == 0
    assert moved("chatstream_rejected_total", code="too_many_runs") == 1
    assert moved("chatstream_rejected_total", code="rate_limited") == 1
    assert moved("chatstream_rejected_total", code="server_shutdown") == 1

    # Histograms: one observation per run, the values `done` reported.
    ttfts = [r.done["metrics"]["ttft_ms"] for r in runs if r.done["metrics"]["ttft_ms"]]
    assert len(ttfts) == 5  # every run but the failed one had text
    assert moved(f"{TTFT}_count", model=MODEL) == len(ttfts)
    assert moved(f"{TTFT}_sum", model=MODEL) == pytest.approx(sum(ttfts) / 1000)
    assert moved(f"{DURATION}_count", model=MODEL) == len(runs)
    assert moved(f"{DURATION}_sum", model=MODEL) == pytest.approx(
        sum(r.done["metrics"]["duration_ms"] for r in runs) / 1000
    )
    assert moved(f"{TTFT}_bucket", model=MODEL, le="+Inf") == len(ttfts)
    fastest = min(ttfts) / 1000
    below = [edge for edge in TTFT_BUCKETS if edge < fastest]
    if below:  # no run was faster than its first token
        assert moved(f"{TTFT}_bucket", model=MODEL, le=str(below[-1])) == 0

    # Tokens: what each `done` reported, summed.
    for kind in ("prompt", "completion"):
        reported = sum(r.done["usage"][f"{kind}_tokens"] for r in runs if r.done["usage"])
        assert reported > 0
        assert moved("chatstream_tokens_total", model=MODEL, type=kind) == reported, kind

    # No owner, session or message id anywhere in the scrape.
    for run in runs:
        start = run.events[0].data
        for identifier in (start["session_id"], start["message_id"], start["user_message_id"]):
            assert identifier not in after.text
    assert "203.0.113" not in after.text


def test_a_run_on_another_allowed_model_counts_under_its_name(
    client: httpx.Client, server: AppServer
) -> None:
    before = scrape(server.base_url)
    answer = client.post("/api/chat", json={"message": "hi", "model": "other-model"})
    assert answer.status_code == 200
    after = scrape(server.base_url)
    assert after.minus(before, "chatstream_runs_total", model="other-model", status="complete") == 1
    assert after.minus(before, "chatstream_runs_total", model=MODEL, status="complete") == 0
    # A model outside the allow-list is refused before any run, so never a label.
    assert client.post("/api/chat", json={"message": "hi", "model": "gpt-x"}).status_code == 422
    assert "gpt-x" not in scrape(server.base_url).text


def test_http_requests_by_route_template_and_status(
    client: httpx.Client, server: AppServer
) -> None:
    before = scrape(server.base_url)
    missing = [str(uuid.uuid4()) for _ in range(3)]
    for session_id in missing:
        assert client.get(f"/api/sessions/{session_id}").status_code == 404
    assert client.get("/no/such/page").status_code == 404
    assert client.get("/another/unknown").status_code == 404
    assert client.get("/healthz").status_code == 200
    assert client.delete("/healthz").status_code == 405
    assert client.post("/api/chat", json={"message": "x" * 70_000}).status_code == 413
    with client.stream("POST", "/api/chat/stream", json={"message": "[[fake tokens=3]]"}) as r:
        read_stream(r)
    after = scrape(server.base_url)

    def requests(method: str, route: str, status: str) -> float:
        return after.minus(
            before, "chatstream_http_requests_total", method=method, route=route, status=status
        )

    assert requests("GET", "/api/sessions/{session_id}", "404") == 3
    assert requests("GET", "unmatched", "404") == 2
    assert requests("GET", "/healthz", "200") == 1
    assert requests("DELETE", "/healthz", "405") == 1
    # Refused before routing (the body limit answers first): no route handled it.
    assert requests("POST", "unmatched", "413") == 1
    assert requests("POST", "/api/chat/stream", "200") == 1
    duration = "chatstream_http_request_duration_seconds_count"
    assert after.minus(before, duration, method="POST", route="/api/chat/stream") == 1
    assert after.minus(before, duration, method="GET", route="/api/sessions/{session_id}") == 3
    # Templates, never the paths themselves.
    routes = after.label_values("chatstream_http_requests_total", "route")
    assert not any(session_id in after.text for session_id in missing)
    assert "/no/such/page" not in routes and "/another/unknown" not in routes


def test_spool_pending_follows_the_spool(
    make_server: Callable[..., AppServer], fake: FakeUpstreamThread, database_path: Path
) -> None:
    server = make_server(database_busy_timeout_s=0.3)
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        stalled = OpenStream(client, {"message": "[[fake tokens=6 stall_after=2]] x"})
        stalled.read(2)
        lock = sqlite3.connect(database_path, timeout=10, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            fake.fake.release(wait_for=1)
            done = stalled.read().done
            assert (done["status"], done["persisted"]) == ("complete", False)
            metrics = scrape(server.base_url)
            assert metrics.value("chatstream_spool_pending") == 1
            assert client.get("/readyz").json()["spooled_runs"] == 1
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        wait_until(
            lambda: scrape(server.base_url).value("chatstream_spool_pending") == 0,
            timeout=30,
            what="the spooled answer reaches the database",
        )


def test_metrics_can_be_switched_off(make_server: Callable[..., AppServer]) -> None:
    server = make_server(metrics=False)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        assert client.get("/metrics").status_code == 404
        assert client.post("/api/chat", json={"message": "hi"}).status_code == 200
        assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def test_metrics_is_documented_in_openapi(client: httpx.Client) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/metrics"]["get"]
    assert "text/plain" in operation["responses"]["200"]["content"]
