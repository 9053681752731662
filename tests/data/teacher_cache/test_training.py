"""Training runs on a teacher cache: end to end without a teacher, resumed exactly, and over two
processes (each reading its own samples' entries) with the losses of one."""

import pytest
import torch

import scalekd.engine.teachers as teachers
from helpers.caches import cached
from helpers.runs import exported, launch_command, run, scalars, train_in_process

MIXING = ["aug.mixup=0.2", "aug.cutmix=1.0", "aug.repeated_aug=2", "run.log_every=1"]


def cached_run(tiny_cache, run_dir, *extra) -> list[str]:
    cache, overrides = tiny_cache
    return [*overrides, *cached(cache), *MIXING, f"run.dir={run_dir}", *extra]


@pytest.fixture(scope="module")
def whole(tmp_path_factory, tiny_cache):
    run_dir = tmp_path_factory.mktemp("cached") / "whole"
    result = train_in_process(cached_run(tiny_cache, run_dir))
    return run_dir, result


def test_a_cached_run_trains_without_a_teacher(tiny_cache, tmp_path, monkeypatch):
    def no_teacher(*args, **kwargs):
        raise AssertionError("teacher.mode=cached built the teacher")

    monkeypatch.setattr(teachers, "recipe_teacher", no_teacher)
    result = train_in_process(cached_run(tiny_cache, tmp_path / "run", "run.max_steps=2",
                                         "distill.method=dkd", "distill.weights={}"))
    assert result.steps == 2 and result.finished
    logged = scalars(result.run_dir)
    assert {"loss/tckd", "loss/nckd", "loss/hard"} <= set(logged)
    assert all(torch.isfinite(torch.tensor(v)) for t in ("loss/tckd", "loss/nckd")
               for v in logged[t].values())
    assert "teacher/top1" not in logged  # no teacher to evaluate


def test_an_interrupted_cached_run_resumes_exactly(whole, tiny_cache, tmp_path):
    run_dir, _ = whole
    cut = tmp_path / "cut"
    train_in_process(cached_run(tiny_cache, cut, "run.max_steps=3", "checkpoint.every_steps=3"))
    resumed = train_in_process(cached_run(tiny_cache, cut))
    assert resumed.steps == 8 and resumed.export.is_file()
    a, b = exported(cut), exported(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert scalars(cut)["loss/total"] == scalars(run_dir)["loss/total"]


@pytest.mark.multiprocess
def test_two_processes_give_the_losses_of_one(tiny_cache, tmp_path):
    # without Mixup/CutMix, which pair the images of each process's own batch
    unmixed = ["aug.mixup=0", "aug.cutmix=0"]
    train_in_process(cached_run(tiny_cache, tmp_path / "one", *unmixed))
    run(launch_command(cached_run(tiny_cache, tmp_path / "two", *unmixed), deepspeed=False),
        tmp_path / "two.log", timeout=600)
    ref, got = scalars(tmp_path / "one"), scalars(tmp_path / "two")
    for tag in ("loss/total", "loss/kd", "loss/hard"):
        assert sorted(got[tag]) == sorted(ref[tag]) == list(range(1, 9)), tag
        for step, value in ref[tag].items():
            assert got[tag][step] == pytest.approx(value, rel=1e-5, abs=1e-6), (tag, step)
