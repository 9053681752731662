"""Checkpoints: complete or invisible, the last K kept, partial writes cleaned up."""

import pytest
import torch
from accelerate import Accelerator

from scalekd.engine.checkpoint import MARKER, Checkpoints


@pytest.fixture
def accelerator():
    acc = Accelerator(cpu=True)
    model = acc.prepare(torch.nn.Linear(3, 2))
    return acc, model


def test_keep_last_k_and_resume_latest(tmp_path, accelerator):
    acc, model = accelerator
    ckpts = Checkpoints(tmp_path, keep=2)
    for step in (1, 2, 3):
        with torch.no_grad():
            model.weight.fill_(step)
        ckpts.save(acc, step, emas={})
    assert [p.name for p in ckpts.complete()] == ["step_000000002", "step_000000003"]
    with torch.no_grad():
        model.weight.zero_()
    assert Checkpoints.load(acc, ckpts.latest(), emas={}) == 3
    assert torch.all(model.weight == 3)


def test_incomplete_and_partial_are_never_resumed(tmp_path, accelerator):
    acc, _ = accelerator
    ckpts = Checkpoints(tmp_path, keep=3)
    ckpts.save(acc, 5, emas={})
    (tmp_path / ".tmp-step_000000009").mkdir()  # a write killed half-way
    broken = tmp_path / "step_000000007"
    broken.mkdir()  # renamed by hand, or a marker lost: not trusted
    with pytest.warns(UserWarning, match="step_000000007: it has no COMPLETE marker"):
        assert ckpts.latest().name == "step_000000005"
    ckpts.remove_partial(acc)
    assert not (tmp_path / ".tmp-step_000000009").exists()
    assert (ckpts.latest() / MARKER).is_file()


def test_a_folder_that_does_not_match_its_marker_is_skipped(tmp_path, accelerator):
    acc, _ = accelerator
    ckpts = Checkpoints(tmp_path, keep=5)
    ckpts.save(acc, 1, emas={})
    missing, truncated, garbled = (ckpts.save(acc, step, emas={}) for step in (2, 3, 4))
    (missing / "trainer_state.json").unlink()
    with open(truncated / "model.safetensors", "r+b") as f:
        f.truncate(10)
    (garbled / MARKER).write_text("{not json")
    with pytest.warns(UserWarning) as warned:
        assert ckpts.latest().name == "step_000000001"
    text = "\n".join(str(w.message) for w in warned)
    assert "step_000000002: files listed in COMPLETE are missing: trainer_state.json" in text
    assert "step_000000003: files differ in size from COMPLETE: model.safetensors" in text
    assert "step_000000004: its COMPLETE marker is unreadable" in text


def test_a_checkpoint_whose_random_state_cannot_be_loaded_is_skipped(tmp_path, accelerator):
    """accelerate only logs (INFO) an RNG file it cannot load and resumes with fresh streams:
    such a checkpoint would resume inexactly, without a word. It counts as damaged."""
    acc, _ = accelerator
    ckpts = Checkpoints(tmp_path, keep=5)
    ckpts.save(acc, 1, emas={})
    garbled, missing = ckpts.save(acc, 2, emas={}), ckpts.save(acc, 3, emas={})
    rng = garbled / "random_states_0.pkl"
    rng.write_bytes(b"\0" * rng.stat().st_size)  # same size: the marker's sizes still match
    (missing / "random_states_0.pkl").unlink()
    (missing / MARKER).write_text("")  # an empty (legacy) marker lists no file to miss
    with pytest.warns(UserWarning) as warned:
        assert ckpts.latest().name == "step_000000001"
    text = "\n".join(str(w.message) for w in warned)
    assert "step_000000002" in text and "step_000000003" in text
    assert "random_states_0.pkl" in text


def test_a_kill_while_pruning_leaves_no_half_deleted_checkpoint(tmp_path, accelerator,
                                                                 monkeypatch):
    """Deleting a checkpoint of gigabytes takes a while; a kill in the middle must not leave a
    half-deleted step_N folder that no start ever removes."""
    import shutil
    from pathlib import Path

    acc, _ = accelerator
    ckpts = Checkpoints(tmp_path, keep=1)
    ckpts.save(acc, 1, emas={})
    real_rmtree = shutil.rmtree

    def killed_midway(path, *args, **kwargs):  # deletes one file of a folder, then dies
        if not Path(path).is_dir():
            return real_rmtree(path, *args, **kwargs)
        next(p for p in Path(path).rglob("*") if p.is_file()).unlink()
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        ckpts.save(acc, 2, emas={})  # prunes step 1
    monkeypatch.undo()
    assert ckpts.latest().name == "step_000000002"
    ckpts.remove_partial(acc)  # what the next start does
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000000002"]


def test_disk_full_is_reported_and_leaves_the_last_checkpoint(tmp_path, accelerator,
                                                               monkeypatch):
    import errno

    from scalekd.engine.checkpoint import CheckpointWriteError

    acc, _ = accelerator
    ckpts = Checkpoints(tmp_path, keep=3)
    good = ckpts.save(acc, 1, emas={})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(acc, "save_state", full)
    with pytest.raises(CheckpointWriteError, match="step 2 .*no space left on device.*"
                       "step_000000001, is intact"):
        ckpts.save(acc, 2, emas={})
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.name]  # nothing half-written
    assert ckpts.latest() == good


def test_training_goes_on_or_stops_when_a_checkpoint_cannot_be_written(tmp_path, tiny_run,
                                                                        monkeypatch):
    import errno

    from helpers.runs import train_in_process
    from scalekd.engine.checkpoint import CheckpointWriteError

    real_save = Checkpoints.save

    def full_after_first(self, accelerator, step, emas):
        if step > 4:
            raise CheckpointWriteError(f"step {step}: {errno.errorcode[errno.ENOSPC]}")
        return real_save(self, accelerator, step, emas)

    monkeypatch.setattr(Checkpoints, "save", full_after_first)
    on = train_in_process(tiny_run(tmp_path / "on", "checkpoint.on_error=continue"))
    assert on.finished and on.steps == 8
    with pytest.raises(CheckpointWriteError):
        train_in_process(tiny_run(tmp_path / "off"))
    assert [p.name for p in (tmp_path / "off" / "checkpoints").iterdir()] == ["step_000000004"]
