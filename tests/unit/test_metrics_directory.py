"""The metrics directory's bookkeeping, as a fleet's parent and each process use it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from chatstream.metrics.multiprocess import (
    forget_dead_processes,
    prepare_directory,
    process_exited,
)


def files_of(pid: int) -> list[str]:
    # The names prometheus_client gives its files, per process.
    return [
        f"counter_{pid}.db",
        f"histogram_{pid}.db",
        f"gauge_livesum_{pid}.db",
        f"gauge_all_{pid}.db",
    ]


def make(directory: Path, *pids: int) -> None:
    directory.mkdir(exist_ok=True)
    for pid in pids:
        for name in files_of(pid):
            (directory / name).write_bytes(b"")


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_fleet_parent_starts_from_an_empty_directory(tmp_path: Path) -> None:
    make(tmp_path / "m", 11, 12)
    (tmp_path / "m" / "notes.txt").write_text("not ours")
    prepare_directory(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["notes.txt"]


def test_an_exited_process_keeps_its_counts_and_loses_its_live_gauges(tmp_path: Path) -> None:
    make(tmp_path, 11, 12)
    process_exited(tmp_path, 11)
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {*files_of(12), *files_of(11)} - {"gauge_livesum_11.db"}


def test_dead_processes_are_forgotten_and_live_ones_kept(tmp_path: Path) -> None:
    dead, alive = dead_pid(), os.getpid()
    make(tmp_path, dead, alive)
    assert forget_dead_processes(tmp_path) == [dead]
    assert not (tmp_path / f"gauge_livesum_{dead}.db").exists()
    assert (tmp_path / f"counter_{dead}.db").exists()
    assert (tmp_path / f"gauge_livesum_{alive}.db").exists()
