"""The durable local spool (`CHATSTREAM_SPOOL_DIR`): what the database could not take, yet.

    instance            this instance's id (made once, kept across restarts)
    lock                held (flock) by the one process using the spool; a second
                        process refuses to start rather than take the first's runs
    pending/<run>.json  a run's rows the database refused; fsynced before the
                        client hears `persisted: false`, written once it is back
    live.json           every live run's rows so far, in one file refreshed about
                        once a second (one write, however many runs), so that a
                        crash loses no more than that (live/<run>.json: the same,
                        one file per run, as earlier releases wrote it; still read)
    broken/<run>.json   what the database kept refusing for a reason in the rows
                        themselves (or a file that cannot be read): kept for a human

Files are replaced atomically (write a temporary file, rename it over). The
pending files are also fsynced, with their directory, so they survive a
machine crash; the checkpoints are not (they only need to survive the
process), since fsyncing them every second for every live run would cost more
than they are worth. A write that fails removes its temporary file, and the
temporary files a crash left are removed when the spool is opened.

A spool that cannot take an answer (the disk is full, or its pending files
would pass `max_bytes`, CHATSTREAM_SPOOL_MAX_BYTES) holds it in memory: it is
listed by `pending()` like the others, so the database gets it when it is
back, and each `pending()` first offers the held answers to the disk again.
One CRITICAL line says so when that starts (however many answers and retries
follow), a WARNING when every held answer is kept again. Held answers are
lost if the process stops first.

Everything here is blocking file I/O: callers run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import orjson

from chatstream.jsonbytes import dumps_to_keep
from chatstream.storage.records import OutputRow, RunOutput

logger = logging.getLogger(__name__)

TEMPORARY = ".tmp"  # how a file being written ends (then renamed over the real one)


class SpoolInUse(RuntimeError):
    """Another process holds the spool directory."""


class SpoolFull(OSError):
    """The pending answers would take more than the spool's `max_bytes`."""


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._pending = directory / "pending"
        self._live = directory / "live"
        self._broken = directory / "broken"
        self._live_file = directory / "live.json"
        for folder in (self._pending, self._live):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock: int | None = _lock(directory / "lock")
        _remove_temporaries(directory, self._pending, self._live, self._broken)
        self.instance_id = self._read_or_make_instance_id()
        # CHATSTREAM_SPOOL_MAX_BYTES: what the pending files may take; None: the disk's space.
        self.max_bytes: int | None = None
        self._guard = threading.Lock()  # callers use the spool from several worker threads
        self._sizes = {path.name: path.stat().st_size for path in self._pending.glob("*.json")}
        self._used = sum(self._sizes.values())
        self._held: dict[uuid.UUID, RunOutput] = {}  # answers the spool could not take

    def close(self) -> None:
        """Let another process have the spool (the lock also dies with the process)."""
        if self._held:
            self._offer_held()
            if self._held:
                logger.error(
                    "%d answer(s) the database and the spool could not take are lost "
                    "(they were held in memory)",
                    len(self._held),
                )
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _read_or_make_instance_id(self) -> str:
        path = self.directory / "instance"
        try:
            value = path.read_text().strip()
            if value:
                return value
        except FileNotFoundError:
            pass
        value = uuid.uuid4().hex
        write_atomically(path, value.encode(), durable=True)
        return value

    # --- outputs the database refused -----------------------------------------------

    def keep(self, output: RunOutput) -> None:
        """Store a run's rows durably until the database takes them (or hold them, if the
        spool cannot take them: see the module's docstring)."""
        try:
            self._store(output)
        except OSError as exc:
            self._hold(output, exc)

    def pending(self) -> list[RunOutput]:
        """Every answer waiting for the database: the spool's, then those held in memory."""
        self._offer_held()
        outputs = self._load_all(self._pending)
        with self._guard:
            return outputs + list(self._held.values())

    def pending_count(self) -> int:
        return sum(1 for _ in self._pending.glob("*.json")) + len(self._held)

    def written(self, output: RunOutput) -> None:
        name = f"{_run_id(output)}.json"
        with contextlib.suppress(FileNotFoundError):
            (self._pending / name).unlink()
        self._uncount(name)
        self._release(output)

    def set_aside(self, output: RunOutput) -> Path:
        """Move a pending output the database keeps refusing to `broken/`; return where."""
        self._broken.mkdir(exist_ok=True)
        name = f"{_run_id(output)}.json"
        target = self._broken / name
        try:
            os.replace(self._pending / name, target)
        except FileNotFoundError:
            write_atomically(target, encode(output), durable=True)
        self._uncount(name)
        self._release(output)
        return target

    def _store(self, output: RunOutput) -> None:
        """Write a pending file, within `max_bytes`; raise OSError if it cannot be written."""
        name = f"{_run_id(output)}.json"
        data = encode(output)
        with self._guard:
            before = self._sizes.get(name, 0)
            if self.max_bytes is not None and self._used - before + len(data) > self.max_bytes:
                raise SpoolFull(errno.ENOSPC, f"CHATSTREAM_SPOOL_MAX_BYTES ({self.max_bytes})")
            self._sizes[name] = len(data)  # reserved while it is written
            self._used += len(data) - before
        try:
            write_atomically(self._pending / name, data, durable=True)
        except BaseException:
            with self._guard:
                self._sizes[name] = before
                self._used -= len(data) - before
                if not before:
                    del self._sizes[name]
            raise

    def _hold(self, output: RunOutput, problem: OSError) -> None:
        with self._guard:
            first = not self._held
            self._held[_run_id(output)] = output
        if first:
            logger.critical(
                "the spool cannot take answers (%s): holding them in memory until the "
                "database or the spool takes them; they are lost if this process stops first. "
                "Free space in %s (or raise CHATSTREAM_SPOOL_MAX_BYTES)",
                _describe(problem),
                self.directory.absolute(),
            )

    def _offer_held(self) -> None:
        """Try the spool again with the answers held in memory, oldest first."""
        with self._guard:
            held = list(self._held.values())
        for output in held:
            try:
                self._store(output)
            except OSError:
                return  # still full
            self._release(output)

    def _uncount(self, name: str) -> None:
        with self._guard:
            self._used -= self._sizes.pop(name, 0)

    def _release(self, output: RunOutput) -> None:
        """`output`, if held in memory, is kept elsewhere now (the database, or a file)."""
        with self._guard:
            if self._held.pop(_run_id(output), None) is None or self._held:
                return
        logger.warning("every answer the spool could not take is kept now")

    # --- live runs' checkpoints ----------------------------------------------------

    def write_checkpoints(self, encoded: list[bytes]) -> None:
        """Replace the checkpoints with these (each `encode(output)` of a live run)."""
        write_atomically(self._live_file, b"[" + b",".join(encoded) + b"]", durable=False)

    def checkpoints(self) -> list[RunOutput]:
        outputs = self._load_all(self._live)
        try:
            data = self._live_file.read_bytes()
        except FileNotFoundError:
            return outputs
        try:
            outputs.extend(_from_raw(raw) for raw in orjson.loads(data))
        except (ValueError, KeyError, TypeError):
            logger.error("spool file %s cannot be read; moved aside", self._live_file.name)
            self._broken.mkdir(exist_ok=True)
            with contextlib.suppress(OSError):
                self._live_file.rename(self._broken / self._live_file.name)
        return outputs

    def clear_checkpoints(self, run_ids: list[uuid.UUID]) -> None:
        """Forget these runs' checkpoints (recovery has written them)."""
        cleared = set(run_ids)
        for run_id in cleared:
            with contextlib.suppress(FileNotFoundError):
                (self._live / f"{run_id}.json").unlink()
        if not self._live_file.exists():
            return
        kept = [output for output in self.checkpoints() if _run_id(output) not in cleared]
        self.write_checkpoints([encode(output) for output in kept])

    # --- reading -----------------------------------------------------------------

    def _load_all(self, folder: Path) -> list[RunOutput]:
        outputs = []
        for path in sorted(folder.glob("*.json")):
            try:
                outputs.append(_decode(path.read_bytes()))
            except (OSError, ValueError, KeyError, TypeError):
                # Keep it for a human; never let one bad file stop recovery.
                logger.error("spool file %s cannot be read; moved aside", path.name)
                self._broken.mkdir(exist_ok=True)
                with contextlib.suppress(OSError):
                    path.rename(self._broken / path.name)
        return outputs


def _lock(path: Path) -> int:
    """Hold an exclusive lock on `path` for as long as this process lives (or until closed)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise SpoolInUse(
            f"the spool directory {path.parent} is in use by another chatstream process "
            f"(pid {holder}); give each instance its own CHATSTREAM_SPOOL_DIR"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _run_id(output: RunOutput) -> uuid.UUID:
    return output.rows[-1].id  # the final assistant row's id is the run's


def encode(output: RunOutput) -> bytes:
    return dumps_to_keep(output)  # kept: a live run's checkpoint, until it changes


def _decode(data: bytes) -> RunOutput:
    return _from_raw(orjson.loads(data))


def _from_raw(raw: dict[str, Any]) -> RunOutput:
    rows = []
    for row in raw["rows"]:
        row["id"] = uuid.UUID(row["id"])
        rows.append(OutputRow(**row))
    parent = raw.get("parent_id")  # absent from files kept before messages had parents
    return RunOutput(
        owner=raw["owner"],
        session_id=uuid.UUID(raw["session_id"]),
        rows=rows,
        parent_id=uuid.UUID(parent) if parent else None,
    )


def write_atomically(path: Path, data: bytes, *, durable: bool) -> None:
    """Replace `path` with `data`: a temporary file written (and fsynced), renamed over it.

    If anything fails, the temporary file is removed: a full disk leaves nothing behind.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}{TEMPORARY}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    if durable:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _remove_temporaries(*folders: Path) -> None:
    """The temporary files a process that died mid-write left (the spool is locked: none is
    being written)."""
    removed = 0
    for folder in folders:
        for path in folder.glob(f".*{TEMPORARY}"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
    if removed:
        logger.info("removed %d temporary file(s) an earlier process left in the spool", removed)


def _describe(problem: OSError) -> str:
    if isinstance(problem, SpoolFull):
        return f"{problem.strerror} reached"
    if problem.errno == errno.ENOSPC:
        return "the disk is full"
    return problem.strerror or type(problem).__name__
