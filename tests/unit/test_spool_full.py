"""A spool that cannot take an answer (disk full, its size cap reached) holds it in memory,
says so once, and leaves no temporary file behind; nor do earlier crashes."""

from __future__ import annotations

import errno
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatstream.durability.spool import Spool, encode, write_atomically
from chatstream.storage.records import OutputRow, RunOutput


def answer(text: str) -> RunOutput:
    row = OutputRow(id=uuid.uuid4(), role="assistant", content=text, status="complete")
    return RunOutput(owner="anonymous", session_id=uuid.uuid4(), rows=[row])


def files_in(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


class FullDisk:
    """The disk under one directory is full: writes to files there fail with ENOSPC."""

    def __init__(self, directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.directory = str(directory.resolve())
        self.full = True
        real_write = os.write

        def write(fd: int, data: bytes | memoryview) -> int:
            if self.full and os.readlink(f"/proc/self/fd/{fd}").startswith(self.directory):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", write)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    spool = Spool(tmp_path / "spool")
    yield spool
    spool.close()


def critical(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc/self/fd")
def test_a_full_disk_holds_answers_in_memory_says_so_once_and_leaves_no_file(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    before = files_in(spool.directory)
    disk = FullDisk(spool.directory, monkeypatch)
    first, second = answer("the first answer"), answer("the second answer")
    with caplog.at_level(logging.INFO, logger="chatstream.durability.spool"):
        spool.keep(first)
        spool.keep(second)
        assert spool.pending_count() == 2
        for _ in range(3):  # the journal's retries: each offers them to the disk again
            assert {o.rows[-1].id for o in spool.pending()} == {
                first.rows[-1].id,
                second.rows[-1].id,
            }
        assert files_in(spool.directory) == before  # not even an empty temporary file
        assert len(critical(caplog)) == 1
        assert "the disk is full" in critical(caplog)[0]

        disk.full = False  # space again: the next retry keeps them on disk
        assert len(spool.pending()) == 2
        assert sorted(p.name for p in (spool.directory / "pending").iterdir()) == sorted(
            f"{o.rows[-1].id}.json" for o in (first, second)
        )
        spool.written(first)
        spool.written(second)
    assert spool.pending_count() == 0
    assert len(critical(caplog)) == 1
    assert any("kept now" in r.getMessage() for r in caplog.records)


def test_the_size_cap_holds_what_would_pass_it_until_there_is_room(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = answer("a" * 100), answer("b" * 100)
    spool.max_bytes = len(encode(first)) + 10
    with caplog.at_level(logging.INFO, logger="chatstream.durability.spool"):
        spool.keep(first)
        spool.keep(second)  # would pass the cap
        assert [p.name for p in (spool.directory / "pending").iterdir()] == [
            f"{first.rows[-1].id}.json"
        ]
        assert spool.pending_count() == 2
        assert "CHATSTREAM_SPOOL_MAX_BYTES" in critical(caplog)[0]
        # The database takes one of them (held answers are listed like the others).
        spool.written(second)
        assert spool.pending_count() == 1
        spool.keep(second)  # and one more, for which there still is no room
        spool.written(first)  # room again
        assert len(spool.pending()) == 1
        assert [p.name for p in (spool.directory / "pending").iterdir()] == [
            f"{second.rows[-1].id}.json"
        ]
    assert len(critical(caplog)) == 2  # one for each time it filled up


def test_a_write_that_fails_removes_its_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fsync(fd: int) -> None:  # delayed allocation: the disk fills up when it is flushed
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError):
        write_atomically(tmp_path / "answer.json", b"{}", durable=True)
    assert list(tmp_path.iterdir()) == []


def test_temporary_files_left_by_a_crash_are_removed_when_the_spool_opens(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "spool"
    first = Spool(directory)
    first.keep(answer("kept"))
    first.close()
    leftovers = [
        directory / ".instance.4242.1.tmp",
        directory / ".live.json.4242.1.tmp",
        directory / "pending" / f".{uuid.uuid4()}.json.4242.1.tmp",
        directory / "live" / f".{uuid.uuid4()}.json.4242.tmp",  # as earlier releases named them
    ]
    for path in leftovers:
        path.touch()
    again = Spool(directory)
    try:
        assert not any(path.exists() for path in leftovers)
        assert len(again.pending()) == 1  # the real files stay
    finally:
        again.close()
