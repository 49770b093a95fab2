"""Answers left in a spool no process will open are moved to one that will (real files)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from chatstream.durability.spool import Spool, SpoolInUse, encode
from chatstream.durability.spool_layout import gather, worker_spool
from chatstream.storage.records import OutputRow, RunOutput


def output(text: str) -> RunOutput:
    row = OutputRow(id=uuid.uuid4(), role="assistant", content=text, status="interrupted")
    return RunOutput(owner="anonymous", session_id=uuid.uuid4(), rows=[row])


def spooled(
    directory: Path, *, pending: Sequence[RunOutput] = (), live: Sequence[RunOutput] = ()
) -> None:
    """What a process left in its spool: refused answers, and live runs' checkpoints."""
    spool = Spool(directory)
    try:
        for each in pending:
            spool.keep(each)
        if live:
            spool.write_checkpoints([encode(each) for each in live])
    finally:
        spool.close()


def contents(directory: Path) -> tuple[set[str], set[str]]:
    """The texts of a spool's pending answers, and of its checkpoints."""
    spool = Spool(directory)
    try:
        return (
            {o.rows[-1].content for o in spool.pending()},
            {o.rows[-1].content for o in spool.checkpoints()},
        )
    finally:
        spool.close()


def test_going_to_workers_moves_the_single_process_spool_and_unused_workers_into_worker_1(
    tmp_path: Path,
) -> None:
    spooled(tmp_path, pending=[output("refused")], live=[output("was live"), output("also")])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "odd.json").write_text("for a human")
    spooled(worker_spool(tmp_path, 2), pending=[output("worker 2's own")])
    spooled(worker_spool(tmp_path, 3), live=[output("worker 3 was live")])
    assert gather(tmp_path, workers=2) == 4
    assert contents(worker_spool(tmp_path, 1)) == (
        {"refused"},
        {"was live", "also", "worker 3 was live"},
    )
    assert contents(worker_spool(tmp_path, 2)) == ({"worker 2's own"}, set())
    assert contents(worker_spool(tmp_path, 3)) == contents(tmp_path) == (set(), set())
    assert (tmp_path / "broken" / "odd.json").read_text() == "for a human"


def test_going_back_to_one_process_moves_every_worker_spool_into_the_base(
    tmp_path: Path,
) -> None:
    spooled(tmp_path, live=[output("its own checkpoint")])
    spooled(worker_spool(tmp_path, 1), pending=[output("one")])
    spooled(worker_spool(tmp_path, 2), live=[output("two")])
    spooled(tmp_path / "worker-notes", pending=[output("not a worker's")])
    assert gather(tmp_path, workers=1) == 2
    assert contents(tmp_path) == ({"one"}, {"its own checkpoint", "two"})
    assert contents(tmp_path / "worker-notes") == ({"not a worker's"}, set())


def test_nothing_to_move_touches_nothing(tmp_path: Path) -> None:
    spooled(worker_spool(tmp_path / "spool", 7))  # a spool, empty
    assert gather(tmp_path / "spool", workers=4) == 0
    assert not (tmp_path / "spool" / "worker-1").exists()


def test_a_spool_another_process_uses_is_left_alone(tmp_path: Path) -> None:
    spooled(worker_spool(tmp_path, 3), pending=[output("busy")])
    held = Spool(worker_spool(tmp_path, 3))  # as its process would hold it
    try:
        with pytest.raises(SpoolInUse, match="worker-3 is in use by another chatstream process"):
            gather(tmp_path, workers=2)
    finally:
        held.close()
    assert contents(worker_spool(tmp_path, 3)) == ({"busy"}, set())


def test_the_same_run_in_both_keeps_the_target_copy(tmp_path: Path) -> None:
    first, other = output("worker 1's"), output("the base's")
    other.rows[-1].id = first.rows[-1].id  # the same run
    spooled(worker_spool(tmp_path, 1), pending=[first], live=[first])
    spooled(tmp_path, pending=[other], live=[other])
    assert gather(tmp_path, workers=2) == 0
    assert contents(worker_spool(tmp_path, 1)) == ({"worker 1's"}, {"worker 1's"})
    assert contents(tmp_path) == ({"the base's"}, {"the base's"})
