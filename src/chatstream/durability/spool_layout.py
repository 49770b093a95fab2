"""Which spool directory each process of a server opens, and answers left where none will.

    CHATSTREAM_SPOOL_DIR/             `chatstream serve` (one process)
    CHATSTREAM_SPOOL_DIR/worker-<i>/  worker i (1…N) of `chatstream serve --workers N`,
                                      the same directory across restarts, so that a
                                      worker that comes back recovers its own runs

A spool holds answers the database has not taken yet (`pending/`) and the
checkpoints of runs that were live when their process died (`live.json`, or
`live/` as earlier releases wrote them). Going
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
import uuid
from pathlib import Path

from chatstream.durability.spool import Spool, encode, write_atomically
from chatstream.storage.records import RunOutput

logger = logging.getLogger(__name__)

WORKER_PREFIX = "worker-"
LIVE_FILE = "live.json"  # every live run's checkpoint, in one file (chatstream.durability.spool)


def worker_spool(base: Path, index: int) -> Path:
    """Worker `index`'s spool (1-based) under CHATSTREAM_SPOOL_DIR."""
    return base / f"{WORKER_PREFIX}{index}"


def gather(base: Path, workers: int) -> int:
    """Move answers from spools none of `workers` processes opens into one they do; how many.

    Each spool is locked while its answers move, so a spool another process
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
                moved += _move_pending(source, target) + _move_checkpoints(held, into)
            finally:
                held.close()
    finally:
        into.close()
    logger.info("moved %d spooled answer(s) into %s, to be written at start-up", moved, target)
    return moved


def _worker_spools(base: Path) -> list[tuple[Path, int]]:
    found = []
    for path in base.glob(f"{WORKER_PREFIX}*"):
        index = path.name.removeprefix(WORKER_PREFIX)
        if index.isdigit() and path.is_dir():
            found.append((path, int(index)))
    return sorted(found, key=lambda pair: pair[1])


def _holds_answers(spool: Path) -> bool:
    if any((spool / "pending").glob("*.json")) or any((spool / "live").glob("*.json")):
        return True
    try:
        return (spool / LIVE_FILE).stat().st_size > len(b"[]")
    except FileNotFoundError:
        return False


def _move_pending(source: Path, target: Path) -> int:
    moved = 0
    for path in sorted((source / "pending").glob("*.json")):
        destination = target / "pending" / path.name
        if destination.exists():
            # The same run in both: the target's copy is written, this one stays for a human.
            logger.warning("%s is also in %s; left where it is", path, destination.parent)
            continue
        os.replace(path, destination)  # same file system: atomic
        moved += 1
    return moved


def _move_checkpoints(source: Spool, target: Spool) -> int:
    """Live runs' checkpoints, each as its own file in the target's `live/` (still read there)."""
    present = {_run_id(output) for output in target.checkpoints()}
    moved = []
    for output in source.checkpoints():
        run_id = _run_id(output)
        if run_id in present:
            logger.warning("checkpoint of run %s is also in %s; left where it is", run_id, target)
            continue
        write_atomically(
            target.directory / "live" / f"{run_id}.json", encode(output), durable=False
        )
        moved.append(run_id)
    source.clear_checkpoints(moved)
    return len(moved)


def _run_id(output: RunOutput) -> uuid.UUID:
    return output.rows[-1].id  # the final assistant row's id is the run's
