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
than they are worth.

Everything here is blocking file I/O: callers run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import orjson

from chatstream.jsonbytes import dumps_to_keep
from chatstream.storage.records import OutputRow, RunOutput

logger = logging.getLogger(__name__)


class SpoolInUse(RuntimeError):
    """Another process holds the spool directory."""


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
        self.instance_id = self._read_or_make_instance_id()

    def close(self) -> None:
        """Let another process have the spool (the lock also dies with the process)."""
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
        _write_atomically(path, value.encode(), durable=True)
        return value

    # --- outputs the database refused -----------------------------------------------

    def keep(self, output: RunOutput) -> None:
        """Store a run's rows durably until the database takes them."""
        _write_atomically(self._pending / f"{_run_id(output)}.json", encode(output), durable=True)

    def pending(self) -> list[RunOutput]:
        return self._load_all(self._pending)

    def pending_count(self) -> int:
        return sum(1 for _ in self._pending.glob("*.json"))

    def written(self, output: RunOutput) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self._pending / f"{_run_id(output)}.json").unlink()

    def set_aside(self, output: RunOutput) -> Path:
        """Move a pending output the database keeps refusing to `broken/`; return where."""
        self._broken.mkdir(exist_ok=True)
        name = f"{_run_id(output)}.json"
        target = self._broken / name
        try:
            os.replace(self._pending / name, target)
        except FileNotFoundError:
            _write_atomically(target, encode(output), durable=True)
        return target

    # --- live runs' checkpoints ----------------------------------------------------

    def write_checkpoints(self, encoded: list[bytes]) -> None:
        """Replace the checkpoints with these (each `encode(output)` of a live run)."""
        _write_atomically(self._live_file, b"[" + b",".join(encoded) + b"]", durable=False)

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
    return RunOutput(owner=raw["owner"], session_id=uuid.UUID(raw["session_id"]), rows=rows)


def _write_atomically(path: Path, data: bytes, *, durable: bool) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temporary, path)
    if durable:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
