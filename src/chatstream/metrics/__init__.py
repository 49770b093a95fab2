"""Prometheus metrics (contract §7): what `GET /metrics` answers, and what feeds it.

    runs ─── RunMetrics (a run listener) ─┐
    HTTP ─── HttpMetrics (ASGI middleware) ┼──▶ collectors ──▶ registry ──▶ GET /metrics
    registry, spool ── read at the source ─┘

One `Metrics` per app, built by `create_app` on a registry of its own (tests
build many apps in one process; no global registry is used). With
`CHATSTREAM_METRICS_DIR` the figures go through files shared by every process
of the server (`metrics/multiprocess.py`), so a scrape of any process covers
them all.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.to_thread
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from chatstream.config import Settings
from chatstream.metrics import multiprocess
from chatstream.metrics.collectors import ChatstreamCollectors, RunMetrics
from chatstream.metrics.http import HttpMetrics

__all__ = ["HttpMetrics", "Metrics"]

# With several processes: how often each writes its live runs and spool count.
REFRESH_S = 5.0


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
        self._spool_pending: Callable[[], int] | None = None

    @asynccontextmanager
    async def watching(
        self, *, live_runs: Callable[[], int], spool_pending: Callable[[], int]
    ) -> AsyncIterator[None]:
        """Read live runs and the spool from their sources while the app serves.

        `live_runs` is read on the event loop (at each run's start and end);
        `spool_pending` is blocking file I/O, read in a worker thread: at each
        scrape and, with several processes, every few seconds, so that a scrape
        of another process sees this one's spool too.
        """
        self.listener.live_runs = live_runs
        self._spool_pending = spool_pending
        if self.directory is None:
            yield
            return
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._refresh_every, REFRESH_S)
            try:
                yield
            finally:
                tasks.cancel_scope.cancel()

    async def _refresh_every(self, interval_s: float) -> None:
        while True:
            self.listener.count_live_runs()
            await anyio.to_thread.run_sync(self._count_spool)
            await anyio.sleep(interval_s)

    def _count_spool(self) -> None:
        if self._spool_pending is None:
            return
        # An unreadable directory keeps the last figure rather than report a wrong one.
        with contextlib.suppress(OSError):
            self.collectors.spool_pending.set(self._spool_pending())

    def scrape(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition for an `Accept` header, and its content type (blocking)."""
        self._count_spool()
        self.listener.count_live_runs()
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type

    def close(self) -> None:
        """This process stops serving: its live figures stop counting."""
        if self.directory is not None:
            multiprocess.process_exited(self.directory, os.getpid())
