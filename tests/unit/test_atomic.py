"""The one atomic write: the target is the old file or the new one, and a failure leaves no temp file behind."""

from __future__ import annotations

import os

import pytest

from acalign_robot.atomic import remove_stale_temp_files, replace_durably, temp_path, write_atomic, write_text_atomic


def test_write_replaces_the_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "status.json"
    path.write_text("old")
    assert write_text_atomic(path, "new\n") == path
    assert path.read_text() == "new\n"
    write_text_atomic(path, "newer", durable=False)
    assert path.read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp_file(tmp_path):
    path = tmp_path / "learner.pt"
    path.write_bytes(b"the last good one")

    def full_disk(handle):
        handle.write(b"half a file")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomic(path, full_disk)
    assert path.read_bytes() == b"the last good one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["learner.pt"]


def test_replace_durably_leaves_the_callers_temp_file_after_a_failure(tmp_path):
    path, temp = tmp_path / "chunk.npz", tmp_path / ".chunk.npz.tmp"

    def killed(handle):
        handle.write(b"part")
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError):
        replace_durably(path, temp, killed)
    assert temp.read_bytes() == b"part" and not path.exists()


def test_temp_names_carry_the_pid_and_only_dead_writers_files_are_removed(tmp_path):
    assert temp_path(tmp_path / "learner.pt").name == f".learner.pt.{os.getpid()}.tmp"
    dead = tmp_path / ".learner.pt.999999999.tmp"  # above any pid_max: that process is gone
    alive = tmp_path / f".status.json.{os.getppid()}.tmp"  # a live process may be writing it now
    own = temp_path(tmp_path / "status.json")  # this process is not writing it now
    unrelated = tmp_path / ".notes.123.tmp"
    for path in (dead, alive, own, unrelated):
        path.write_bytes(b"partial")
    removed = remove_stale_temp_files(tmp_path, ("learner.pt", "status.json"))
    assert sorted(removed) == sorted([dead, own])
    assert alive.exists() and unrelated.exists()
