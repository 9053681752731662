"""A non-finite loss: the run stops with an error naming the step, the term and the last good
checkpoint, and nothing non-finite is ever saved (run.on_nonfinite=stop); or the step is not
applied, at most run.max_skipped_steps times a job (run.on_nonfinite=skip). In one process and
in two, where only one rank diverges (tests/helpers/distributed_run.py injects the NaN)."""

import re
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from helpers.distributed_run import inject_nonfinite
from helpers.runs import (complete_checkpoints, launch_command, subprocess_env, train_in_process)
from scalekd.engine.divergence import TrainingDiverged
from scalekd.engine.run_folder import FINISHED

EVERY_STEP = ["checkpoint.every_steps=1", "checkpoint.keep=20", "eval.teacher=false"]


def weights(checkpoint) -> dict:
    return load_file(str(checkpoint / "model.safetensors"))


def all_finite(checkpoint) -> bool:
    return all(torch.isfinite(t).all() for t in weights(checkpoint).values())


@pytest.fixture
def nan_kd_at_step_6(monkeypatch):
    from scalekd.distill.base import Distiller

    monkeypatch.setattr(Distiller, "total", Distiller.total)  # undone after the test
    inject_nonfinite("6", "0", "kd")


def test_stop_names_step_term_and_last_good_checkpoint(tmp_path, tiny_run, nan_kd_at_step_6):
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at step 6 for the student: "
                       r"kd = nan, total = nan \(rank 0\).*last good checkpoint is "
                       r".*step_000000004"):
        train_in_process(tiny_run(run_dir, "checkpoint.every_steps=2", "run.log_every=4",
                                  "eval.teacher=false"))
    saved = complete_checkpoints(run_dir)
    assert [p.name for p in saved] == ["step_000000002", "step_000000004"]
    assert all(all_finite(p) for p in saved)
    assert not (run_dir / "export").exists() and not (run_dir / FINISHED).exists()


def test_skip_does_not_apply_the_step(tmp_path, tiny_run, nan_kd_at_step_6):
    run_dir = tmp_path / "run"
    result = train_in_process(tiny_run(run_dir, "run.on_nonfinite=skip", *EVERY_STEP))
    assert result.finished and result.steps == 8
    step = {int(p.name[5:]): p for p in complete_checkpoints(run_dir)}
    assert (step[6] / "model.safetensors").read_bytes() == (step[5] / "model.safetensors"
                                                             ).read_bytes()
    adam = [torch.load(step[n] / "optimizer.bin", weights_only=True)["state"] for n in (5, 6)]
    assert adam[0].keys() == adam[1].keys() and all(  # moments and step counts untouched
        adam[0][p][k].equal(adam[1][p][k]) for p in adam[0] for k in adam[0][p])
    assert (step[7] / "model.safetensors").read_bytes() != (step[6] / "model.safetensors"
                                                             ).read_bytes()
    assert all(all_finite(p) for p in step.values())


@pytest.mark.parametrize("lr", ["1e9", "inf"])
def test_a_diverging_learning_rate_stops_and_saves_nothing_non_finite(tmp_path, tiny_run, lr):
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="non-finite"):
        train_in_process(tiny_run(run_dir, f"optim.lr={lr}", "run.epochs=4", *EVERY_STEP))
    assert all(all_finite(p) for p in complete_checkpoints(run_dir))
    assert not (run_dir / "export").exists() and not (run_dir / FINISHED).exists()


def test_skipping_is_bounded(tmp_path, tiny_run):
    """optim.lr=inf: the first update makes the weights non-finite, every later loss is NaN and
    skipped, until more than run.max_skipped_steps were."""
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"step 4 .*more than run.max_skipped_steps=2"):
        train_in_process(tiny_run(run_dir, "optim.lr=inf", "run.on_nonfinite=skip",
                                  "run.max_skipped_steps=2", "eval.teacher=false"))
    assert complete_checkpoints(run_dir) == []


def test_skip_is_refused_under_deepspeed(tmp_path, tiny_run):
    from scalekd.recipe import RecipeError

    with pytest.raises(RecipeError, match="run.on_nonfinite=skip: under DeepSpeed"):
        train_in_process(tiny_run(tmp_path / "run", "run.on_nonfinite=skip",
                                  "dist.zero_stage=2"))


@pytest.mark.multiprocess
@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_one_rank_diverging_two_processes(tmp_path, tiny_run, mode):
    """Only rank 1's loss goes NaN (at step 6): under stop the run ends with status 3 naming
    step 6 and rank 1, nothing from step 6 on saved; under skip both ranks skip that step."""
    run_dir = tmp_path / "run"
    env = {**subprocess_env(), "SCALEKD_TEST_NONFINITE": "6:1:kd"}
    done = subprocess.run(
        launch_command(tiny_run(run_dir, f"run.on_nonfinite={mode}", *EVERY_STEP),
                       deepspeed=False), env=env, capture_output=True, text=True, timeout=900)
    saved = {int(p.name[5:]): p for p in complete_checkpoints(run_dir)}
    assert all(all_finite(p) for p in saved.values())
    if mode == "stop":
        # each rank exits with status 3; the launcher reports a failed child with 1
        assert done.returncode == 1, done.stderr[-3000:]
        assert len(re.findall(r"exitcode\s*:\s*3\b", done.stderr)) >= 1, done.stderr[-3000:]
        # the first rank to exit makes the launcher end the other (SIGTERM)
        assert ("training diverged: non-finite loss at step 6 for the student: kd = nan, "
                "total = nan (rank 1)") in done.stderr
        assert "step_000000005" in done.stderr  # the last good checkpoint
        assert max(saved) == 5 and not (run_dir / FINISHED).exists()
    else:
        assert done.returncode == 0, done.stderr[-3000:]
        assert (run_dir / FINISHED).read_text() == "8\n"
        assert weights(saved[6]).keys() == weights(saved[5]).keys()
        assert all(weights(saved[6])[k].equal(weights(saved[5])[k]) for k in weights(saved[5]))
