"""Answers left in a spool no process will open are moved to one that will (real files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatstream.storage.spool import Spool, SpoolInUse
from chatstream.storage.spool_layout import gather, worker_spool


def put(spool: Path, folder: str, name: str, content: str = "{}") -> Path:
    path = spool / folder / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


def names(spool: Path, folder: str) -> set[str]:
    return {path.stem for path in (spool / folder).glob("*.json")}


def test_going_to_workers_moves_the_single_process_spool_and_unused_workers_into_worker_1(
    tmp_path: Path,
) -> None:
    put(tmp_path, "pending", "single-pending")
    put(tmp_path, "live", "single-live")
    put(tmp_path, "broken", "for-a-human")
    put(worker_spool(tmp_path, 2), "pending", "still-worker-2s")
    put(worker_spool(tmp_path, 3), "live", "worker-3-live")
    assert gather(tmp_path, workers=2) == 3
    first = worker_spool(tmp_path, 1)
    assert names(first, "pending") == {"single-pending"}
    assert names(first, "live") == {"single-live", "worker-3-live"}
    assert names(worker_spool(tmp_path, 2), "pending") == {"still-worker-2s"}
    assert names(tmp_path, "pending") == names(tmp_path, "live") == set()
    assert names(tmp_path, "broken") == {"for-a-human"}


def test_going_back_to_one_process_moves_every_worker_spool_into_the_base(
    tmp_path: Path,
) -> None:
    put(worker_spool(tmp_path, 1), "pending", "one")
    put(worker_spool(tmp_path, 2), "live", "two")
    put(tmp_path / "worker-notes", "pending", "not-a-worker")  # not a worker's spool
    assert gather(tmp_path, workers=1) == 2
    assert names(tmp_path, "pending") == {"one"}
    assert names(tmp_path, "live") == {"two"}
    assert names(tmp_path / "worker-notes", "pending") == {"not-a-worker"}


def test_nothing_to_move_touches_nothing(tmp_path: Path) -> None:
    assert gather(tmp_path / "spool", workers=4) == 0
    assert not (tmp_path / "spool").exists()


def test_a_spool_another_process_uses_is_left_alone(tmp_path: Path) -> None:
    kept = put(worker_spool(tmp_path, 3), "pending", "busy")
    held = Spool(worker_spool(tmp_path, 3))  # as its process would hold it
    try:
        with pytest.raises(SpoolInUse, match="worker-3 is in use by another chatstream process"):
            gather(tmp_path, workers=2)
    finally:
        held.close()
    assert kept.exists()


def test_the_same_run_in_both_keeps_the_target_copy(tmp_path: Path) -> None:
    put(tmp_path, "pending", "same", "from the base")
    target = put(worker_spool(tmp_path, 1), "pending", "same", "worker 1's")
    assert gather(tmp_path, workers=2) == 0
    assert target.read_text() == "worker 1's"
    assert (tmp_path / "pending" / "same.json").read_text() == "from the base"
