"""Two teachers of different architectures (a tiny ViT and timm's test ResNet, random weights
saved to files) distilled into one student (distill.method=multi_teacher): per-teacher terms and
metrics, the standardisation fitted before the first step and kept in the checkpoint, and a run
stopped after step 3 and resumed ending bit for bit as the uninterrupted one, without refitting."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers.runs import (STOCHASTIC, TINY_VIT, exported, launch_command, run, scalars,
                          train_in_process)
from scalekd.distill.multi_teacher import Standardiser

TEACHERS = ("vit", "cnn")


@pytest.fixture(scope="module")
def two_teachers(tmp_path_factory, tiny_teacher):
    import timm

    folder = tmp_path_factory.mktemp("teachers")
    torch.manual_seed(0)
    cnn = timm.create_model("test_resnet", num_classes=10)
    save_file({k: v.contiguous() for k, v in cnn.state_dict().items()},
              str(folder / "cnn.safetensors"))

    def overrides(run_dir, *extra):
        return [
            "data.source=synthetic", "data.num_samples=64", "data.input_size=32",
            "data.batch_size=16", "student.name=vit_tiny_patch16_224",
            f"student.kwargs={TINY_VIT}",
            "teachers.vit.name=vit_tiny_patch16_224", f"teachers.vit.kwargs={TINY_VIT}",
            f"teachers.vit.checkpoint={tiny_teacher}", "teachers.vit.dtype=fp32",
            "teachers.cnn.name=test_resnet", f"teachers.cnn.checkpoint={folder / 'cnn.safetensors'}",
            "teachers.cnn.dtype=fp32",
            "distill.method=multi_teacher", "distill.options.fit_batches=2",
            "distill.options.drop_teacher=0.5",  # draws from the run's RNG every step
            f"run.dir={run_dir}", "run.epochs=2", "run.log_every=1",
            "optim.name=adamw", "optim.lr=1e-3", "optim.warmup_epochs=0", *STOCHASTIC, *extra]

    return folder, overrides


@pytest.fixture(scope="module")
def whole(two_teachers):
    folder, overrides = two_teachers
    return train_in_process(overrides(folder / "whole"))


def test_each_teacher_has_its_terms_and_metrics(whole):
    logged = scalars(whole.run_dir)
    for name in TEACHERS:
        assert {f"loss/kd.{name}", f"loss/feature.{name}", f"teacher/{name}/top1"} <= set(logged)
    assert whole.steps == 8 and set(logged["loss/total"]) == set(range(1, 9))


def test_the_fitted_standardisation_is_in_the_checkpoint_not_the_export(whole):
    state = load_file(str(sorted((whole.run_dir / "checkpoints").glob("step_*"))[-1]
                          / "model.safetensors"))
    for name in TEACHERS:
        prefix = f"distiller.standardisers.{name}."
        assert state[prefix + "fitted"].item()
        assert not torch.equal(state[prefix + "mean"], torch.zeros_like(state[prefix + "mean"]))
        assert not torch.equal(state[prefix + "std"], torch.ones_like(state[prefix + "std"]))
    assert not any("distiller" in k for k in exported(whole.run_dir))  # a plain timm student


def test_scalekd_eval_compares_with_the_main_teacher(whole):
    from scalekd.engine.saved_run import SavedRun

    teacher = SavedRun(whole.run_dir).teacher()  # what `scalekd eval --teacher` runs
    assert type(teacher.model).__name__ == "VisionTransformer"  # vit, the first listed


def test_a_stopped_two_teacher_run_resumes_bit_exactly_without_refitting(whole, two_teachers,
                                                                          monkeypatch):
    folder, overrides = two_teachers
    cut = folder / "cut"
    first = train_in_process(overrides(cut, "run.steps_per_job=3"))
    assert not first.finished and first.steps == 3

    def refit(*args):
        raise AssertionError("the resumed run refitted the standardisation")

    monkeypatch.setattr(Standardiser, "fit", refit)
    resumed = train_in_process(overrides(cut))
    assert resumed.finished and resumed.steps == whole.steps
    got, want = exported(cut), exported(whole.run_dir)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    after, before = scalars(cut), scalars(whole.run_dir)
    for tag in ("loss/total", "loss/feature.cnn", "loss/kd.vit"):
        assert after[tag][8] == before[tag][8], tag
    assert resumed.metrics == whole.metrics


LAUNCHES = {  # name: (DeepSpeed?, extra overrides)
    "ddp": (False, []),
    # a ZeRO-3 student with the CNN teacher in a ZeRO-3 engine of its own (slow: DeepSpeed's
    # first launch on a machine compiles its comm op)
    "zero3": (True, ["dist.zero_stage=3", "teachers.cnn.placement=zero3"]),
}


@pytest.mark.multiprocess
@pytest.mark.parametrize("name", [
    "ddp", pytest.param("zero3", marks=pytest.mark.slow)])
def test_two_processes_fit_and_train_as_one(two_teachers, name):
    """The standardisation is fitted over both processes' images (all-reduced), so two
    processes give one process's losses and evaluation (a ViT student: no BatchNorm)."""
    folder, overrides = two_teachers
    plain = ["distill.options.drop_teacher=0", "student.drop_path=0", "data.workers=0"]
    one, two = folder / "one", folder / name
    if not one.exists():
        train_in_process(overrides(one, *plain))
    deepspeed, extra = LAUNCHES[name]
    run(launch_command(overrides(two, *plain, *extra), deepspeed), folder / f"{name}.log",
        timeout=900)
    ref, got = scalars(one), scalars(two)
    for teacher in TEACHERS:
        tag = f"loss/feature.{teacher}"
        assert got[tag] == pytest.approx(ref[tag], rel=1e-5), tag
    assert got["loss/total"] == pytest.approx(ref["loss/total"], rel=1e-5)
    assert got["eval/top1"] == ref["eval/top1"]
    if name == "zero3":  # the CNN teacher (the one sharded) holds half its weights a rank
        counts = json.loads((two / "sharding" / "rank1.json").read_text())["teacher"]
        assert counts["zero3_params"] == counts["params"] > 0
        assert counts["local"] <= counts["full"] / 2 + counts["params"]
