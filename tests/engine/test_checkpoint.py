"""Checkpoints: complete or invisible, the last K kept, partial writes cleaned up."""

import re

import pytest
import torch
from accelerate import Accelerator

from scalekd.engine.checkpoint import MARKER, Checkpoints, DamagedCheckpoint


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


@pytest.mark.parametrize("on_error", ["stop", "continue"])
def test_training_goes_on_or_stops_when_a_checkpoint_cannot_be_written(tmp_path, tiny_run,
                                                                        monkeypatch, on_error):
    """torch.save failing as it does on a full disk (its zip writer's RuntimeError) from the
    second checkpoint on: the run stops naming the intact first one, or trains to the end."""
    import accelerate.utils.other

    from helpers.runs import train_in_process
    from scalekd.engine.checkpoint import CheckpointWriteError

    real_save = torch.save

    def full_after_first(obj, path, *args, **kwargs):
        if "step_000000004" not in str(path):
            _torch_full()
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(accelerate.utils.other.torch, "save", full_after_first)
    overrides = tiny_run(tmp_path, f"checkpoint.on_error={on_error}")
    if on_error == "continue":
        assert train_in_process(overrides).steps == 8
        assert (tmp_path / "FINISHED").is_file()
    else:
        with pytest.raises(CheckpointWriteError, match="step 8 .*unexpected pos.*the last "
                                                       "complete checkpoint, .*step_000000004, "
                                                       "is intact"):
            train_in_process(overrides)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000000004"]


# ---------------------------------------------------------------------------------------------
# disk full: wherever the write fails, the half-written folder goes and the intact one is named

def _enospc(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def _torch_full(*args, **kwargs):  # what torch.save's zip writer raises on a full disk
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1564096 vs "
                       "1563988")


def _safetensors_full(*args, **kwargs):
    from safetensors import SafetensorError

    raise SafetensorError("Error while serializing: I/O error: No space left on device "
                          "(os error 28)")


def _marker_fails(real):
    def write(path, text):
        if path.name == MARKER:
            _enospc()
        return real(path, text)
    return write


@pytest.mark.parametrize("where", ["torch.save", "accelerate safetensors", "ema safetensors",
                                   "marker"])
def test_a_write_that_fails_anywhere_leaves_the_last_checkpoint(tmp_path, accelerator,
                                                                 monkeypatch, where):
    import accelerate.checkpointing
    import accelerate.utils.other
    from timm.utils import ModelEmaV3

    import scalekd.engine.checkpoint as checkpoint

    acc, model = accelerator
    emas = {"": ModelEmaV3(model, decay=0.9)}
    ckpts = Checkpoints(tmp_path, keep=3)
    good = ckpts.save(acc, 1, emas)
    if where == "torch.save":  # accelerate's optimizer.bin and RNG files
        monkeypatch.setattr(accelerate.utils.other.torch, "save", _torch_full)
    elif where == "accelerate safetensors":  # accelerate's model.safetensors
        monkeypatch.setattr(accelerate.utils.other, "safe_save_file", _safetensors_full)
    elif where == "ema safetensors":
        monkeypatch.setattr(checkpoint, "save_file", _safetensors_full)
    else:
        monkeypatch.setattr(checkpoint, "_write_synced", _marker_fails(checkpoint._write_synced))
    with pytest.raises(checkpoint.CheckpointWriteError,
                       match="step 2 .*the half-written folder is removed and the last complete "
                             "checkpoint, .*step_000000001, is intact"):
        ckpts.save(acc, 2, emas)
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.name]
    assert ckpts.latest() == good


# ---------------------------------------------------------------------------------------------
# damage: every file's checksum is in the marker; resume takes the newest intact checkpoint


def _garble(path, offset: int, count: int = 16) -> None:
    """Overwrite `count` bytes at `offset` (negative: from the end) in place: same size."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(offset % size)
        old = f.read(count)
        f.seek(offset % size)
        f.write(bytes(b ^ 0x5A for b in old))


def _edit_step(path) -> None:
    state = path.read_text()
    assert '"step": 6' in state
    path.write_text(state.replace('"step": 6', '"step": 2'))  # same size


DAMAGE = {  # what -> (file, how)
    "garbled bytes inside model.safetensors": ("model.safetensors", lambda p: _garble(
        p, 8 + int.from_bytes(p.read_bytes()[:8], "little"), 8)),  # the tensors, past the header
    "garbled bytes inside optimizer.bin": ("optimizer.bin", lambda p: _garble(p, -2000)),
    "garbled safetensors header": ("model.safetensors", lambda p: _garble(p, 8)),
    "garbled trainer_state.json": ("trainer_state.json", lambda p: _garble(p, 0, 4)),
    "trainer_state.json step 6 edited to 2": ("trainer_state.json", _edit_step),
    "garbled RNG state": ("random_states_0.pkl", lambda p: _garble(p, -300)),
}


@pytest.fixture
def with_optimizer():
    """A model and an Adam optimiser with state, so that checkpoints hold optimizer.bin."""
    acc = Accelerator(cpu=True)
    model, optimizer = acc.prepare(*(lambda m: (m, torch.optim.Adam(m.parameters())))(
        torch.nn.Linear(3, 2)))
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return acc, model


@pytest.fixture
def three_checkpoints(tmp_path, with_optimizer):
    acc, model = with_optimizer
    ckpts = Checkpoints(tmp_path, keep=5)
    for step in (2, 4, 6):
        with torch.no_grad():
            model.weight.fill_(step)
        ckpts.save(acc, step, emas={})
    return ckpts


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_is_skipped_saying_why(three_checkpoints, with_optimizer, damage):
    acc, model = with_optimizer
    name, spoil = DAMAGE[damage]
    spoil(three_checkpoints.folder / "step_000000006" / name)
    with pytest.warns(UserWarning, match=f"step_000000006: files do not match their crc32 "
                                         f"checksum in COMPLETE .*: {name}"):
        latest = three_checkpoints.latest()
    assert latest.name == "step_000000004"
    assert Checkpoints.load(acc, latest, emas={}) == 4
    assert torch.all(model.weight == 4)


def test_no_intact_checkpoint_refuses_to_start_afresh(three_checkpoints):
    folder = three_checkpoints.folder
    _garble(folder / "step_000000006" / "model.safetensors", -64)
    (folder / "step_000000004" / "trainer_state.json").write_text("{}")
    _garble(folder / "step_000000002" / "optimizer.bin", -2000)
    with pytest.warns(UserWarning), pytest.raises(
            DamagedCheckpoint, match=r"(?s)no intact checkpoint in .*"
            r"step_000000006: files do not match .*: model.safetensors.*"
            r"step_000000004: files differ in size from COMPLETE: trainer_state.json.*"
            r"step_000000002: files do not match .*: optimizer.bin.*checkpoint.resume=overwrite"):
        three_checkpoints.latest()


def test_a_named_checkpoint_is_verified_too(three_checkpoints):
    path = three_checkpoints.folder / "step_000000004"
    assert Checkpoints.check(path) == path
    _garble(path / "optimizer.bin", -2000)
    with pytest.raises(DamagedCheckpoint, match="step_000000004 cannot be resumed from: files "
                                                "do not match their crc32 checksum"):
        Checkpoints.check(path)


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.bin", "trainer_state.json"])
def test_a_legacy_checkpoint_that_cannot_be_read_says_so(three_checkpoints, with_optimizer,
                                                         name):
    """An empty marker (before markers listed files) has nothing to verify: a truncated file is
    found on loading, and reported as such instead of the reader's traceback."""
    acc, _ = with_optimizer
    path = three_checkpoints.folder / "step_000000006"
    (path / MARKER).write_text("")
    with open(path / name, "r+b") as f:
        f.truncate(f.seek(0, 2) - 100 if name != "trainer_state.json" else 10)
    if name == "trainer_state.json":  # read to find the processes' RNG files: skipped at once
        assert three_checkpoints.latest() == three_checkpoints.folder / "step_000000004"
        return
    assert three_checkpoints.latest() == path  # unverifiable: trusted as it was then
    where = re.escape(str(path))
    with pytest.raises(DamagedCheckpoint, match=rf"could not load checkpoint {where} \(.*"
                       "checkpoint.resume=FOLDER, or start from scratch"):
        Checkpoints.load(acc, path, emas={})


def test_the_marker_lists_every_file_with_size_and_checksum(three_checkpoints):
    import json
    import zlib

    path = three_checkpoints.latest()
    marker = json.loads((path / MARKER).read_text())
    files = sorted(p.name for p in path.iterdir() if p.name != MARKER)
    assert marker["checksum"] == "crc32" and sorted(marker["files"]) == files
    for name, entry in marker["files"].items():
        data = (path / name).read_bytes()
        assert entry == {"size": len(data), "crc32": f"{zlib.crc32(data):08x}"}


# ---------------------------------------------------------------------------------------------
# a real full disk: a tmpfs of a few MiB (mounting one needs root; CI runs as root)


@pytest.fixture
def small_filesystem(tmp_path):
    """`mount(mib)`: a fresh tmpfs of that size, unmounted after the test; `resize(path, mib)`."""
    import os
    import subprocess

    mounted = []

    def mount(mib: int):
        path = tmp_path / f"fs{len(mounted)}"
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode:
            why = f"cannot mount a {mib} MiB tmpfs (needs root): {done.stderr.strip()}"
            if os.environ.get("CI"):  # CI runs as root: a skip would hide the check
                pytest.fail(why)
            pytest.skip(why)
        mounted.append(path)
        return path

    def resize(path, mib: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={mib}m", str(path)], check=True)

    mount.resize = resize
    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _cli(overrides: list[str], log) -> tuple[int, str]:
    """Run the tiny run as `python recipe.py` does; its exit status and output."""
    from helpers.runs import single_command, start

    proc = start(single_command(overrides), log)
    code = proc.wait(timeout=600)
    return code, log.read_text(errors="replace")


# the tiny run's checkpoint is 11.3 MB (3.7 model.safetensors, 7.5 optimizer.bin), its export 3.7
# and its timm folder (export/student_timm) 3.7 more
@pytest.mark.slow
@pytest.mark.parametrize("case", ["second, stop", "second, continue", "first"])
def test_a_full_disk_stops_or_trains_on_naming_the_intact_checkpoint(tmp_path, tiny_run,
                                                                       small_filesystem, case):
    """A checkpoint that cannot fit (the first, on 8 MiB; the second beside the first, on 20, where the exports still fit)
    is refused before anything is written: no half-written folder, the intact checkpoint named,
    exit status 1 and no traceback (or trained to the end with on_error=continue)."""
    disk = small_filesystem(8 if case == "first" else 20)
    run_dir = disk / "run"
    folder = run_dir / "checkpoints"
    on_error = "continue" if "continue" in case else "stop"
    overrides = tiny_run(run_dir, "run.epochs=3", f"checkpoint.on_error={on_error}",
                         "eval.teacher=false")
    code, out = _cli(overrides, tmp_path / "run.log")
    assert "Traceback" not in out, out[-3000:]
    needs = r" \(no space left on device: the checkpoint needs about 1\d\.\d MiB; "
    if case == "first":
        assert re.search(re.escape(f"could not write the checkpoint of step 4 in {folder}")
                         + needs, out), out[-3000:]
        assert "the half-written folder is removed and there is no earlier checkpoint" in out
        assert code == 1 and list(folder.iterdir()) == []
        return
    assert re.search(re.escape(f"could not write the checkpoint of step 8 in {folder}") + needs,
                     out), out[-3000:]
    assert f"the last complete checkpoint, {folder / 'step_000000004'}, is intact" in out
    assert [p.name for p in folder.iterdir()] == ["step_000000004"]
    if on_error == "continue":
        assert code == 0 and (run_dir / "FINISHED").is_file(), out[-3000:]
        return
    assert code == 1 and not (run_dir / "FINISHED").exists()
    small_filesystem.resize(disk, 64)  # space freed: the same command resumes and finishes
    code, out = _cli(overrides, tmp_path / "rerun.log")
    assert code == 0 and f"resumed from {folder / 'step_000000004'} at step 4" in out, out[-3000:]
    assert (run_dir / "FINISHED").read_text() == "12\n"


@pytest.mark.slow
def test_a_write_that_runs_out_of_space_is_removed(tmp_path, tiny_run, small_filesystem,
                                                   monkeypatch):
    """Past the check before writing (space taken by something else meanwhile): torch's zip
    writer fails on the real filesystem half-way through optimizer.bin; the folder goes."""
    from helpers.runs import train_in_process
    from scalekd.engine.checkpoint import CheckpointWriteError

    monkeypatch.setattr(Checkpoints, "_check_room", lambda self, expected: None)
    folder = small_filesystem(8) / "run" / "checkpoints"
    with pytest.raises(CheckpointWriteError,
                       match=re.escape(f"could not write the checkpoint of step 4 in {folder} "
                                       "(RuntimeError: [enforce fail at inline_container.cc")
                       + ".*the half-written folder is removed and there is no earlier "):
        train_in_process(tiny_run(folder.parent, "eval.teacher=false"))
    assert list(folder.iterdir()) == []


@pytest.mark.slow
def test_an_export_that_does_not_fit_leaves_no_half_file(tmp_path, tiny_run, small_filesystem):
    disk = small_filesystem(13)  # the final checkpoint fits, the export beside it does not
    run_dir = disk / "run"
    overrides = tiny_run(run_dir, "run.epochs=1", "eval.teacher=false")
    code, out = _cli(overrides, tmp_path / "run.log")
    assert code == 1, out[-3000:]
    assert (f"could not write {run_dir / 'export' / 'student.safetensors'} (SafetensorError: "
            "Error while serializing: I/O error: No space left on device" in out), out[-3000:]
    assert "The checkpoint of step 4 holds the trained state. Free space" in out
    assert "Traceback" not in out, out[-3000:]
    assert not (run_dir / "export").exists() or not list((run_dir / "export").iterdir())
    assert not (run_dir / "FINISHED").exists()
    small_filesystem.resize(disk, 64)
    code, out = _cli(overrides, tmp_path / "rerun.log")
    assert code == 0 and (run_dir / "export" / "student.safetensors").is_file(), out[-3000:]
    assert (run_dir / "FINISHED").is_file()


@pytest.mark.slow
def test_a_run_resumes_from_the_newest_intact_checkpoint_or_refuses(tmp_path, tiny_run):
    """Through the command line: a checkpoint garbled in place (same size) is skipped saying why
    and the run resumes from the one before; with every checkpoint damaged it refuses to start
    from scratch, exit status 1, without a traceback."""
    from helpers.runs import train_in_process

    run_dir = tmp_path / "run"
    folder = run_dir / "checkpoints"
    every = "checkpoint.every_steps=2"
    assert train_in_process(tiny_run(run_dir, every, "run.steps_per_job=6")).steps == 6
    _garble(folder / "step_000000006" / "optimizer.bin", -2000)
    code, out = _cli(tiny_run(run_dir, every, "run.steps_per_job=1"), tmp_path / "a.log")
    assert code == 0, out[-3000:]
    assert (f"skipping checkpoint {folder / 'step_000000006'}: files do not match their crc32 "
            "checksum in COMPLETE (damaged or edited since written): optimizer.bin") in out
    assert f"resumed from {folder / 'step_000000004'} at step 4" in out

    for path in folder.iterdir():
        weights = path / "model.safetensors"
        _garble(weights, 8 + int.from_bytes(weights.read_bytes()[:8], "little") + 100)
    code, out = _cli(tiny_run(run_dir, every), tmp_path / "b.log")
    assert code == 1 and "Traceback" not in out, out[-3000:]
    assert f"scalekd: no intact checkpoint in {folder}, so nothing to resume from:" in out
    for step in (4, 5, 6):
        assert f"  step_00000000{step}: files do not match their crc32 checksum" in out
    assert "start from scratch with checkpoint.resume=overwrite" in out


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_full_disk_under_zero3_stops_every_rank(tmp_path, tiny_run, small_filesystem):
    """Two ZeRO-3 processes, a first checkpoint (two 5.6 MB optimiser shards) that cannot fit
    on 8 MiB: both stop with the error instead of one failing inside DeepSpeed's save while the
    other waits in its barrier (which hung until the launcher's timeout before the room check)."""
    from helpers.runs import launch_command, start

    run_dir = small_filesystem(8) / "run"
    proc = start(launch_command(tiny_run(run_dir, "run.epochs=1", "eval.teacher=false",
                                         "dist.zero_stage=3"), deepspeed=True),
                 tmp_path / "run.log")
    code = proc.wait(timeout=600)
    out = (tmp_path / "run.log").read_text(errors="replace")
    assert code != 0 and out.count(f"scalekd: could not write the checkpoint of step 4 in "
                                   f"{run_dir / 'checkpoints'}") == 2, out[-3000:]
    assert "no space left on device: the checkpoint needs about 10.7 MiB" in out
    assert list((run_dir / "checkpoints").iterdir()) == []
