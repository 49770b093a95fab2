"""Several processes, one scrape: prometheus_client's multiprocess mode.

With `CHATSTREAM_METRICS_DIR` set, every process writes its figures to
memory-mapped files in that directory (one set per process id) and a scrape
of any process merges every file: counters and histograms are summed over
all processes that ever wrote there; `chatstream_runs_active` and
`chatstream_spool_pending` over the live ones (`livesum`), each process
setting its own (`Metrics.watching`).

The mode is per process, not per app (prometheus_client picks how values are
stored when a metric is made, and names the files by process id), so
`enable` switches the whole process, once, before the first metric is made.

Who cleans the directory:

- the parent of `serve --workers N` empties it before it starts its workers
  (`prepare_directory`), and calls `process_exited(pid)` for each worker
  that exits, so a dead worker's live runs stop counting;
- each process, at start, does the same for processes that died without
  anyone noticing (`forget_dead_processes`), and for itself when it stops.

Counters of processes that exited stay in the sum (as they must: a total
that went down would read as a reset), until the directory is emptied.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from prometheus_client import values
from prometheus_client.multiprocess import mark_process_dead

ENVIRONMENT_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def enable(directory: Path) -> None:
    """Store this process's metric values as files in `directory` (idempotent)."""
    directory.mkdir(parents=True, exist_ok=True)
    wanted = str(directory.resolve())
    current = os.environ.get(ENVIRONMENT_VARIABLE)
    if current is not None and current != wanted:
        raise RuntimeError(
            f"metrics already use {current}; one process cannot write to two directories"
        )
    # Read by the value class whenever it opens a file.
    os.environ[ENVIRONMENT_VARIABLE] = wanted
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def enabled() -> bool:
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def prepare_directory(directory: Path) -> None:
    """Empty the directory (a fleet's parent, before it starts its workers)."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.glob("*.db"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def process_exited(directory: Path, pid: int) -> None:
    """Stop counting the live gauges of a process that exited."""
    mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def forget_dead_processes(directory: Path) -> list[int]:
    """`process_exited` for every process with files here that no longer runs."""
    dead = [pid for pid in _pids(directory) if not _running(pid)]
    for pid in dead:
        process_exited(directory, pid)
    return dead


def _pids(directory: Path) -> set[int]:
    pids = set()
    for path in directory.glob("*.db"):
        # <type>_<pid>.db, or gauge_<mode>_<pid>.db
        tail = path.stem.rsplit("_", 1)[-1]
        if tail.isdigit():
            pids.add(int(tail))
    return pids


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True
