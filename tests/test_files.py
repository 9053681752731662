"""scalekd.files: a file is published whole (flushed, renamed in its folder, folder flushed) or
not at all."""

import os

import pytest

import scalekd.files as files


def test_a_write_is_flushed_then_renamed_and_its_folder_flushed(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    path = files.write_text_atomically(tmp_path / "probe.json", "{}")
    assert path.read_text() == "{}" and sorted(os.listdir(tmp_path)) == ["probe.json"]
    # the data under its temporary name in the same folder, then the folder's entries
    assert synced == [str(tmp_path / ".tmp-probe.json"), str(tmp_path)]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = files.write_text_atomically(tmp_path / "metrics.json", "old")

    def half_then_fail(tmp):
        tmp.write_text("ha")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        files.write_atomically(path, half_then_fail)
    assert path.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["metrics.json"]


def test_a_folder_that_fails_half_way_leaves_the_previous_one(tmp_path):
    folder = files.write_folder_atomically(tmp_path / "student_timm", lambda tmp: (
        tmp.mkdir(), (tmp / "config.json").write_text("old")))

    def half_then_fail(tmp):
        tmp.mkdir()
        (tmp / "config.json").write_text("new")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        files.write_folder_atomically(folder, half_then_fail)
    assert (folder / "config.json").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["student_timm"]
    files.write_folder_atomically(folder, lambda tmp: (tmp.mkdir(),
                                                       (tmp / "config.json").write_text("new")))
    assert (folder / "config.json").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["student_timm"]
