"""`chatstream serve --workers N`: N worker processes on one machine, serving as one.

    the parent (this module)                 each worker (chatstream.worker), i = 1…N
    ─ migrates the database once, binds      ─ create_app(settings) with its own spool,
      the listening socket once                CHATSTREAM_SPOOL_DIR/worker-i
    ─ starts the workers (spawn), each on    ─ ChatstreamServer on the shared socket:
      that socket                              the kernel hands each connection to one
    ─ restarts a worker that dies, or        ─ tells the parent Ready(instance) or Failed,
      that stops beating (a stuck loop)        then a Heartbeat every second
    ─ SIGTERM/SIGINT: SIGTERM to each,       ─ SIGTERM: drains its runs, then its
      then waits for their drain               connections (chatstream.server)

The workers are instances of contract §6: what they share goes through Redis
(runs, limits, the run cap, so CHATSTREAM_REDIS_URL is required) and the
database; their metrics through files in one directory
(`chatstream.metrics.multiprocess`), so a scrape of any covers all.

A worker that cannot start (its configuration, the database, Redis) would
fail the same way on every restart: the parent stops the others and exits
with that worker's status and its one line, as uvicorn's supervisor does with
a worker that fails at start-up. A worker that dies once it serves is
replaced, on the same spool: it recovers what it had spooled, and the runs it
was streaming are ended by the other workers when their lease lapses
(CHATSTREAM_RUN_LEASE_S).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from pathlib import Path

from chatstream.config import Settings
from chatstream.durability.spool_layout import gather, worker_spool
from chatstream.errors import StartupError
from chatstream.logs import Redactor, configure_logging, secrets_of
from chatstream.metrics import multiprocess
from chatstream.server import CONNECTION_DRAIN_S
from chatstream.startup import open_spool, prepare_database, spool_checked
from chatstream.storage.db import Database
from chatstream.worker import STARTUP_FAILED, Failed, Heartbeat, Ready, run_worker

logger = logging.getLogger(__name__)

# Past the runs' grace and the connections' drain: each worker's lifespan closing.
STOP_MARGIN_S = 10.0
_spawn = multiprocessing.get_context("spawn")


class WorkerCouldNotStart(Exception):
    """A worker failed before it served; the server stopped. The message is one line."""

    def __init__(self, index: int, failed: Failed) -> None:
        super().__init__(f"worker {index} could not start: {failed.reason}")
        self.status = failed.status


def serve_workers(settings: Settings, workers: int) -> int:
    """Serve with `workers` processes until SIGTERM or SIGINT; return the exit status.

    Raises `StartupError` when the server cannot start (the database, the
    spool, the port) and `WorkerCouldNotStart` when a worker cannot.
    """
    configure_logging(settings.log_level, secrets_of(settings), process="supervisor")
    with spool_checked(settings.spool_dir):
        gather(settings.spool_dir, workers)
    # Held while the workers serve: no other server takes this spool directory.
    spool = open_spool(settings.spool_dir)
    try:
        asyncio.run(_prepare_database(settings))
        with (
            _listening(settings.host, settings.port) as listener,
            _metrics_directory(settings) as metrics_dir,
        ):
            supervisor = Supervisor(settings, workers, listener, metrics_dir)
            status = supervisor.run()
        if supervisor.failure is not None:
            raise supervisor.failure
        return status
    finally:
        spool.close()


async def _prepare_database(settings: Settings) -> None:
    """Once, here: the workers then find the schema current (SQLite has no migration lock)."""
    async with Database.from_settings(settings) as database:
        await prepare_database(
            database, auto_migrate=settings.auto_migrate, redact=Redactor(secrets_of(settings))
        )


@contextlib.contextmanager
def _listening(host: str, port: int) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}): free the port, or "
                "choose another (CHATSTREAM_PORT, --port)"
            ) from None
        sock.set_inheritable(True)
        yield sock
    finally:
        sock.close()


@contextlib.contextmanager
def _metrics_directory(settings: Settings) -> Iterator[Path | None]:
    """CHATSTREAM_METRICS_DIR (emptied), or a fresh directory removed at exit."""
    if not settings.metrics:
        yield None
        return
    if settings.metrics_dir is not None:
        multiprocess.prepare_directory(settings.metrics_dir)
        yield settings.metrics_dir
        return
    directory = Path(tempfile.mkdtemp(prefix="chatstream-metrics-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class _Worker:
    index: int
    process: SpawnProcess
    pid: int
    reports: multiprocessing.connection.Connection | None
    ready: bool = False
    failed: Failed | None = None
    beat: float = 0.0  # monotonic time of its last heartbeat (from Ready on)
    killed_as_hung: bool = False


class Supervisor:
    def __init__(
        self, settings: Settings, count: int, listener: socket.socket, metrics_dir: Path | None
    ) -> None:
        self._settings = settings
        self._count = count
        self._listener = listener
        self._metrics_dir = metrics_dir
        self._workers: dict[int, _Worker] = {}
        self._stop_by: float | None = None  # monotonic deadline, once stopping
        self._announced = False
        self.status = 0
        self.failure: WorkerCouldNotStart | None = None

    def run(self) -> int:
        """Start the workers; keep them running until a signal, or until one cannot start."""
        # Signals wake the wait below through this socket (they carry their number).
        wake, wakeup_end = socket.socketpair()
        for end in (wake, wakeup_end):
            end.setblocking(False)
        previous_fd = signal.set_wakeup_fd(wakeup_end.fileno())
        previous = {sig: signal.signal(sig, _noted) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for index in range(1, self._count + 1):
                self._start(index)
            while self._workers:
                self._wait(wake)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_fd)
            wake.close()
            wakeup_end.close()
        return self.status

    def _wait(self, wake: socket.socket) -> None:
        waitables: list[object] = [wake]
        for worker in self._workers.values():
            waitables.append(worker.process.sentinel)
            if worker.reports is not None:
                waitables.append(worker.reports)
        # Wake at least this often to find a worker that stopped beating.
        timeout = self._settings.worker_heartbeat_timeout_s / 4
        if self._stop_by is not None:
            timeout = min(timeout, max(0.0, self._stop_by - time.monotonic()))
        ready = multiprocessing.connection.wait(waitables, timeout)  # type: ignore[arg-type]
        if wake in ready:
            with contextlib.suppress(BlockingIOError):
                for signum in wake.recv(64):
                    self._on_signal(signum)
        for worker in list(self._workers.values()):
            self._read_reports(worker)
            if not worker.process.is_alive():
                self._on_exit(worker)
            else:
                self._kill_if_hung(worker)
        if self._stop_by is not None and time.monotonic() >= self._stop_by:
            self._kill_the_rest()

    def _start(self, index: int) -> None:
        settings = self._settings.model_copy(
            update={
                "spool_dir": worker_spool(self._settings.spool_dir, index),
                "metrics_dir": self._metrics_dir,
            }
        )
        reports, report = _spawn.Pipe(duplex=False)
        process = _spawn.Process(
            target=run_worker,
            args=(settings, f"worker-{index}", self._listener, report),
            name=f"chatstream-worker-{index}",
        )
        process.start()
        report.close()  # the worker has its own copy; its exit closes the pipe
        assert process.pid is not None
        self._workers[index] = _Worker(index, process, process.pid, reports)
        logger.debug("worker %d starting (pid %s)", index, process.pid)

    def _read_reports(self, worker: _Worker) -> None:
        while worker.reports is not None and worker.reports.poll():
            try:
                message = worker.reports.recv()
            except (EOFError, OSError):
                worker.reports.close()
                worker.reports = None
                return
            if isinstance(message, Heartbeat):
                worker.beat = time.monotonic()
            elif isinstance(message, Ready):
                worker.ready = True
                worker.beat = time.monotonic()
                logger.info(
                    "worker %d ready (pid %d, instance %s)",
                    worker.index,
                    worker.pid,
                    message.instance,
                )
                self._announce()
            elif isinstance(message, Failed):
                worker.failed = message

    def _kill_if_hung(self, worker: _Worker) -> None:
        """A serving worker whose loop stopped turning holds its runs and connections
        hostage: kill it (its runs' leases lapse and another worker ends them) and,
        once its exit is seen, start it again."""
        if not worker.ready or worker.killed_as_hung or self._stop_by is not None:
            return
        silent_s = time.monotonic() - worker.beat
        if silent_s < self._settings.worker_heartbeat_timeout_s:
            return
        logger.warning(
            "worker %d stopped answering (no heartbeat for %.1f s, pid %d): killing it",
            worker.index,
            silent_s,
            worker.pid,
        )
        worker.killed_as_hung = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGKILL)

    def _announce(self) -> None:
        if self._announced or self._stop_by is not None:
            return
        if len(self._workers) == self._count and all(w.ready for w in self._workers.values()):
            self._announced = True
            host, port = self._listener.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            logger.info(
                "chatstream running on http://%s:%d with %d workers (Press CTRL+C to quit)",
                shown,
                port,
                self._count,
            )

    def _on_exit(self, worker: _Worker) -> None:
        self._read_reports(worker)  # a Failed sent just before exiting
        del self._workers[worker.index]
        if worker.reports is not None:
            worker.reports.close()
        if self._metrics_dir is not None:
            multiprocess.process_exited(self._metrics_dir, worker.pid)
        code = worker.process.exitcode
        how = _describe_exit(code)
        worker.process.close()
        if self._stop_by is not None:
            if code in (0, -signal.SIGTERM):  # uvicorn ends with the signal it drained for
                logger.info("worker %d stopped (pid %d)", worker.index, worker.pid)
            else:
                logger.warning("worker %d stopped (pid %d, %s)", worker.index, worker.pid, how)
            return
        if not worker.ready:
            failed = worker.failed or Failed(STARTUP_FAILED, f"it exited during start-up ({how})")
            logger.error("worker %d could not start (pid %d): %s", worker.index, worker.pid, how)
            self.failure = WorkerCouldNotStart(worker.index, failed)
            self.status = failed.status
            self._stop()
            return
        logger.warning(
            "worker %d exited unexpectedly (pid %d, %s): starting it again",
            worker.index,
            worker.pid,
            how,
        )
        self._start(worker.index)

    def _on_signal(self, signum: int) -> None:
        if signum not in (signal.SIGTERM, signal.SIGINT):
            return
        name = signal.Signals(signum).name
        if self._stop_by is not None:
            logger.info("%s: already stopping, waiting for the workers to drain", name)
            return
        logger.info("%s: stopping the workers (their live runs get their grace)", name)
        self._stop()

    def _stop(self) -> None:
        grace = self._settings.shutdown_grace_s + CONNECTION_DRAIN_S + STOP_MARGIN_S
        self._stop_by = time.monotonic() + grace
        for worker in self._workers.values():
            # SIGTERM even for SIGINT: a worker that got Ctrl-C from the terminal
            # too would take a second SIGINT as "force quit" and skip its drain.
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)

    def _kill_the_rest(self) -> None:
        for worker in self._workers.values():
            logger.error(
                "worker %d (pid %d) did not stop in time: killing it", worker.index, worker.pid
            )
            worker.process.kill()
            worker.process.join(STOP_MARGIN_S)  # reaped by the next wait
        self.status = self.status or 1


def _noted(signum: int, frame: object) -> None:
    """Nothing: the wakeup socket carries the signal to the supervisor's loop."""


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"
