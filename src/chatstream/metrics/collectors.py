"""The figures of contract §7, and the run listener that moves them.

Everything here is observed once per run (or per refused chat, or per HTTP
request), never per token: the run's record carries its usage, its time to
first token and its duration, so tokens per second and the like are derived
in PromQL, not counted on the hot path.

Labels are bounded: `model` only from the configured allow-list (anything
else counts under `other`), `status` and `code` from fixed sets, never an
owner, a session or a message id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from chatstream.runs.lifecycle import RunRecord, RunStarted

# Time to first token: from a few milliseconds (a cache, a small local model)
# to minutes (a queued reasoning model).
TTFT_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0,
)  # fmt: skip
# A whole run: up to CHATSTREAM_MAX_RUN_DURATION_S (default 600 s) and beyond.
RUN_DURATION_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0,
    120.0, 180.0, 300.0, 450.0, 600.0, 900.0, 1200.0,
)  # fmt: skip
# An HTTP request: a JSON answer in milliseconds, a stream as long as its run.
HTTP_DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip

OTHER = "other"
RUN_STATUSES = ("complete", "cancelled", "error", "interrupted")
UPSTREAM_ERROR_CODES = ("upstream_error", "upstream_timeout", "upstream_rate_limited")
# Why a chat is refused before its run begins (`ChatService` → `chat_rejected`).
REJECTION_CODES = (
    "rate_limited",
    "too_many_runs",
    "server_shutdown",
    "unavailable",
    "database_unavailable",
    "quota_exceeded",
)
TOKEN_TYPES = ("prompt", "completion")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ChatstreamCollectors:
    """Every collector, registered on `registry` (None in multiprocess mode: files hold them)."""

    def __init__(self, registry: CollectorRegistry | None, models: Sequence[str]) -> None:
        self.models = frozenset(models)
        model_labels = [*models, OTHER]
        self.runs_total = Counter(
            "chatstream_runs",
            "Runs that ended, by model and final status (complete, cancelled, error, interrupted).",
            ["model", "status"],
            registry=registry,
        )
        # Both gauges are set from their source (the run registry, the spool
        # directory), never counted up and down; livesum: with several processes,
        # the sum over the live ones.
        self.runs_active = Gauge(
            "chatstream_runs_active",
            "Runs being generated right now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.spool_pending = Gauge(
            "chatstream_spool_pending",
            "Runs' answers the database could not take yet, kept in the local spool.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.ttft = Histogram(
            "chatstream_time_to_first_token_seconds",
            "From a run's start to its first text (runs that produced text).",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.run_duration = Histogram(
            "chatstream_run_duration_seconds",
            "From a run's start to its end, tool rounds included.",
            ["model"],
            buckets=RUN_DURATION_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "chatstream_tokens",
            "Tokens of ended runs, by model and type (prompt or completion); estimated when "
            "the model server reports no usage.",
            ["model", "type"],
            registry=registry,
        )
        self.upstream_errors = Counter(
            "chatstream_upstream_errors",
            "Runs that ended on a model server failure, by error code.",
            ["code"],
            registry=registry,
        )
        self.rejected = Counter(
            "chatstream_rejected",
            "Chats refused before their run began, by error code.",
            ["code"],
            registry=registry,
        )
        # Token quotas (chatstream.limiting.quotas), by model: never by owner.
        self.quota_tokens = Counter(
            "chatstream_quota_tokens",
            "Tokens counted against owners' quotas when their runs ended, by model.",
            ["model"],
            registry=registry,
        )
        self.quota_exceeded = Counter(
            "chatstream_quota_exceeded",
            "Chats refused because their owner's token quota was used up, by model.",
            ["model"],
            registry=registry,
        )
        self.http_requests = Counter(
            "chatstream_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.http_duration = Histogram(
            "chatstream_http_request_duration_seconds",
            "HTTP request durations (a stream's lasts until it ends), by method and route "
            "template.",
            ["method", "route"],
            buckets=HTTP_DURATION_BUCKETS,
            registry=registry,
        )
        # Known label sets start at zero, so that rate() and absent() work from the
        # first scrape, before anything happened.
        for model in model_labels:
            self.ttft.labels(model)
            self.run_duration.labels(model)
            self.quota_tokens.labels(model)
            self.quota_exceeded.labels(model)
            for status in RUN_STATUSES:
                self.runs_total.labels(model, status)
            for kind in TOKEN_TYPES:
                self.tokens.labels(model, kind)
        for code in UPSTREAM_ERROR_CODES:
            self.upstream_errors.labels(code)
        for code in REJECTION_CODES:
            self.rejected.labels(code)

    def model_label(self, model: str) -> str:
        return model if model in self.models else OTHER


class RunMetrics:
    """A run listener (`chatstream.runs.lifecycle`): each call is a handful of increments.

    The labelled series are looked up once, here, not at every run.
    """

    def __init__(self, collectors: ChatstreamCollectors) -> None:
        c = self._c = collectors
        # The registry's count of live runs, once the lifespan has opened it.
        self.live_runs: Callable[[], int] | None = None
        models = [*sorted(c.models), OTHER]
        self._runs = {(m, s): c.runs_total.labels(m, s) for m in models for s in RUN_STATUSES}
        self._ttft = {m: c.ttft.labels(m) for m in models}
        self._duration = {m: c.run_duration.labels(m) for m in models}
        self._tokens = {(m, t): c.tokens.labels(m, t) for m in models for t in TOKEN_TYPES}
        self._upstream_errors = {
            code: c.upstream_errors.labels(code) for code in UPSTREAM_ERROR_CODES
        }
        self._rejected = {code: c.rejected.labels(code) for code in (*REJECTION_CODES, OTHER)}
        self._quota_tokens = {m: c.quota_tokens.labels(m) for m in models}
        self._quota_exceeded = {m: c.quota_exceeded.labels(m) for m in models}

    def run_started(self, run: RunStarted) -> None:
        self.count_live_runs()

    def count_live_runs(self) -> None:
        if self.live_runs is not None:
            self._c.runs_active.set(self.live_runs())

    def run_finished(self, record: RunRecord) -> None:
        self.count_live_runs()
        model = self._c.model_label(record.model)
        self._runs[model, record.status].inc()
        metrics = record.metrics
        # The figures `done` reported, so that the scrape and the clients agree.
        if metrics["ttft_ms"] is not None:
            self._ttft[model].observe(metrics["ttft_ms"] / 1000)
        self._duration[model].observe(metrics["duration_ms"] / 1000)
        usage = record.usage
        if usage is not None:
            if usage["prompt_tokens"]:
                self._tokens[model, "prompt"].inc(usage["prompt_tokens"])
            if usage["completion_tokens"]:
                self._tokens[model, "completion"].inc(usage["completion_tokens"])
        error = record.error
        if error is not None and error["code"] in self._upstream_errors:
            self._upstream_errors[error["code"]].inc()

    def chat_rejected(self, code: str) -> None:
        self._rejected[code if code in self._rejected else OTHER].inc()

    def quota_settled(self, model: str, tokens: int) -> None:
        self._quota_tokens[self._c.model_label(model)].inc(tokens)

    def quota_exceeded(self, model: str) -> None:
        self._quota_exceeded[self._c.model_label(model)].inc()


def http_method_label(method: str) -> str:
    return method if method in HTTP_METHODS else OTHER
