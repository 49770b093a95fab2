"""Which spool directory each process of a server opens, and answers left where none will.

    CHATSTREAM_SPOOL_DIR/             `chatstream serve` (one process)
    CHATSTREAM_SPOOL_DIR/worker-<i>/  worker i (1…N) of `chatstream serve --workers N`,
                                      the same directory across restarts, so that a
                                      worker that comes back recovers its own runs

A spool holds answers the database has not taken yet (`pending/`) and the
checkpoints of runs that were live when their process died (`live/`). Going
from one process to N workers, or from N workers to fewer (or to one), would
leave some in a spool no process opens; `gather` moves them, before anything
serves, into one that will be opened (worker 1's, or the single process's),
whose start-up writes them as usual. A run is written once whoever writes it:
every write is idempotent on message ids. `broken/` stays where it is: it is
for a human.

Everything here is blocking file I/O, done before the server starts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from chatstream.storage.spool import Spool

logger = logging.getLogger(__name__)

WORKER_PREFIX = "worker-"
_MOVED_FOLDERS = ("pending", "live")


def worker_spool(base: Path, index: int) -> Path:
    """Worker `index`'s spool (1-based) under CHATSTREAM_SPOOL_DIR."""
    return base / f"{WORKER_PREFIX}{index}"


def gather(base: Path, workers: int) -> int:
    """Move answers from spools none of `workers` processes opens into one they do; how many.

    Each spool is locked while its files move, so a spool another process
    still uses is never emptied under it: `SpoolInUse` says which.
    """
    target = base if workers == 1 else worker_spool(base, 1)
    sources = [path for path, index in _worker_spools(base) if workers == 1 or index > workers]
    if workers > 1:
        sources.append(base)
    sources = [source for source in sources if _holds_answers(source)]
    if not sources:
        return 0
    moved = 0
    into = Spool(target)
    try:
        for source in sources:
            held = Spool(source)
            try:
                moved += _move_answers(source, target)
            finally:
                held.close()
    finally:
        into.close()
    logger.info(
        "moved %d spooled answer(s) into %s, where they are written at start-up", moved, target
    )
    return moved


def _worker_spools(base: Path) -> list[tuple[Path, int]]:
    found = []
    for path in base.glob(f"{WORKER_PREFIX}*"):
        index = path.name.removeprefix(WORKER_PREFIX)
        if index.isdigit() and path.is_dir():
            found.append((path, int(index)))
    return sorted(found, key=lambda pair: pair[1])


def _holds_answers(spool: Path) -> bool:
    return any(any((spool / folder).glob("*.json")) for folder in _MOVED_FOLDERS)


def _move_answers(source: Path, target: Path) -> int:
    moved = 0
    for folder in _MOVED_FOLDERS:
        for path in sorted((source / folder).glob("*.json")):
            destination = target / folder / path.name
            if destination.exists():
                # The same run in both: the target's copy is written, this one stays for a human.
                logger.warning("%s is also in %s; left where it is", path, destination.parent)
                continue
            os.replace(path, destination)  # same file system: atomic
            moved += 1
    return moved
