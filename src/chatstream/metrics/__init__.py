"""Prometheus metrics (contract §7): what `GET /metrics` answers, and what feeds it.

    runs ─── RunMetrics (a run listener) ─┐
    HTTP ─── HttpMetrics (ASGI middleware) ┼──▶ collectors ──▶ registry ──▶ GET /metrics
    spool ── counted when scraped ─────────┘

One `Metrics` per app, built by `create_app` on a registry of its own (tests
build many apps in one process; no global registry is used). With
`CHATSTREAM_METRICS_DIR` the figures go through files shared by every process
of the server (`metrics/multiprocess.py`), so a scrape of any process covers
them all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from chatstream.config import Settings
from chatstream.metrics import multiprocess
from chatstream.metrics.collectors import ChatstreamCollectors, RunMetrics
from chatstream.metrics.http import HttpMetrics

__all__ = ["HttpMetrics", "Metrics"]


class Metrics:
    def __init__(self, settings: Settings) -> None:
        self.directory: Path | None = settings.metrics_dir
        self.registry = CollectorRegistry()
        if self.directory is not None:
            multiprocess.enable(self.directory)
            multiprocess.forget_dead_processes(self.directory)
            # The values live in files; the scrape reads every process's.
            self.collectors = ChatstreamCollectors(None, settings.models)
            MultiProcessCollector(self.registry, path=str(self.directory))  # type: ignore[no-untyped-call]
        else:
            self.collectors = ChatstreamCollectors(self.registry, settings.models)
            # CPU, memory, open files: per process, so only when there is one.
            ProcessCollector(registry=self.registry)
        self.listener = RunMetrics(self.collectors)
        self._spool = SpoolCollector()
        self.registry.register(self._spool)

    def watch_spool(self, pending_count: Callable[[], int]) -> None:
        """Report `pending_count()` (blocking file I/O: scrapes run in a thread)."""
        self._spool.pending_count = pending_count

    def scrape(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition for an `Accept` header, and its content type (blocking)."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type

    def close(self) -> None:
        """This process stops serving: its live figures stop counting."""
        if self.directory is not None:
            multiprocess.process_exited(self.directory, os.getpid())


class SpoolCollector:
    """`chatstream_spool_pending`, counted in the spool directory at scrape time.

    With several processes, each reports the spool directory it uses (the same
    number from each when they share one).
    """

    NAME = "chatstream_spool_pending"
    HELP = "Runs' answers the database could not take yet, kept in the local spool."

    def __init__(self) -> None:
        self.pending_count: Callable[[], int] | None = None

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self.NAME, self.HELP)]

    def collect(self) -> Iterable[Metric]:
        if self.pending_count is None:  # the lifespan has not opened the spool yet
            return []
        try:
            pending = self.pending_count()
        except OSError:
            return []  # no figure rather than a wrong one
        return [GaugeMetricFamily(self.NAME, self.HELP, value=pending)]
