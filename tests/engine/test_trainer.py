"""Several students in one run: one batch and one teacher forward for all, each trained exactly
as it would be alone, each with its own optimizer, EMA, checkpoint state and export."""

import pytest
import torch

from helpers.runs import exported, scalars, train_in_process

STUDENTS = ["students.dkd.distill.method=dkd", "students.dkd.distill.weights={}",
            "students.dkd.ema.decay=0.9", "students.alone.distill.method=supervised",
            "students.alone.distill.weights={}", "students.alone.optim.lr=3e-3"]
SOLO = {"": [], "dkd": ["distill.method=dkd", "distill.weights={}", "ema.decay=0.9"],
        "alone": ["distill.method=supervised", "distill.weights={}", "optim.lr=3e-3"]}


@pytest.fixture(scope="module")
def multi(tmp_path_factory, tiny_run):
    base = tmp_path_factory.mktemp("students")
    result = train_in_process(tiny_run(base / "multi", "run.log_every=1", *STUDENTS))
    return base, result


def export_of(run_dir, name: str, stem: str = "student") -> dict:
    return exported(run_dir, f"{name}/{stem}" if name else stem)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", list(SOLO))
def test_each_student_trains_as_it_would_alone(multi, tiny_run, name):
    base, result = multi
    solo = base / f"solo_{name or 'main'}"
    train_in_process(tiny_run(solo, "run.log_every=1", *SOLO[name]))
    assert_same_weights(export_of(result.run_dir, name), exported(solo))
    prefix = f"{name}/" if name else ""
    together, alone = scalars(result.run_dir), scalars(solo)
    assert together[f"{prefix}loss/total"] == alone["loss/total"]
    assert result.metrics[f"{prefix}eval/top1"] == alone["eval/top1"][8]


def test_each_student_has_its_own_exports_and_optimizer(multi):
    _, result = multi
    assert set(result.exports) == {"", "dkd", "alone"}
    assert (result.run_dir / "export" / "dkd" / "student_ema.safetensors").is_file()
    lrs = scalars(result.run_dir)
    assert lrs["alone/lr"][1] != lrs["lr"][1]  # alone's own learning rate
    checkpoint = sorted((result.run_dir / "checkpoints").glob("step_*"))[-1]
    assert {p.name for p in checkpoint.glob("optimizer*.bin")} == {
        "optimizer.bin", "optimizer_1.bin", "optimizer_2.bin"}
    assert (checkpoint / "ema_dkd.safetensors").is_file()


def test_interrupted_multi_student_run_resumes_exactly(multi, tiny_run):
    base, result = multi
    cut = base / "cut"
    train_in_process(tiny_run(cut, "run.log_every=1", *STUDENTS, "run.max_steps=3",
                              "checkpoint.every_steps=3"))
    resumed = train_in_process(tiny_run(cut, "run.log_every=1", *STUDENTS))
    assert resumed.steps == 8
    for name in SOLO:
        assert_same_weights(export_of(cut, name), export_of(result.run_dir, name))
    assert_same_weights(export_of(cut, "dkd", "student_ema"),
                        export_of(result.run_dir, "dkd", "student_ema"))


# ScaleKD: projectors train, checkpoint and resume with the student, and stay out of the export
SCALEKD = ["distill.method=scalekd", "run.log_every=1"]


def test_scalekd_projectors_resume_exactly_and_are_not_exported(tmp_path, tiny_run):
    import timm
    from safetensors.torch import load_file

    whole = train_in_process(tiny_run(tmp_path / "whole", *SCALEKD))
    cut = tmp_path / "cut"
    train_in_process(tiny_run(cut, *SCALEKD, "run.max_steps=3", "checkpoint.every_steps=3"))
    saved = load_file(str(cut / "checkpoints" / "step_000000003" / "model.safetensors"))
    assert any(k.startswith("distiller.caps.spatial_s3.") for k in saved)
    resumed = train_in_process(tiny_run(cut, *SCALEKD))
    assert resumed.steps == whole.steps == 8
    assert_same_weights(exported(cut), exported(whole.run_dir))
    assert scalars(cut)["loss/frequency.s4"][8] == scalars(whole.run_dir)["loss/frequency.s4"][8]

    weights = exported(whole.run_dir)
    assert not any("distiller" in k or "caps" in k for k in weights)
    bare = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8,
                             depth=2)
    loaded = bare.load_state_dict(weights, strict=True)  # a plain timm model, nothing left over
    assert not loaded.missing_keys and not loaded.unexpected_keys
    assert all(torch.equal(bare.state_dict()[k], weights[k]) for k in weights)


def test_accumulation_derived_from_the_device_batch_keeps_the_global_batch(tmp_path, tiny_run):
    """Global batch 16: micro-batches of at most 8 mean 2 accumulated micro-batches a step, the
    run data.grad_accum=2 gives, and the same optimiser steps as one batch of 16."""
    runs = {name: tmp_path / name for name in ("derived", "explicit", "whole")}
    train_in_process(tiny_run(runs["derived"], "data.device_batch=8", "run.log_every=1"))
    train_in_process(tiny_run(runs["explicit"], "data.grad_accum=2", "run.log_every=1"))
    train_in_process(tiny_run(runs["whole"], "run.log_every=1"))
    derived, explicit, whole = (exported(runs[n]) for n in ("derived", "explicit", "whole"))
    for key, value in derived.items():
        assert torch.equal(value, explicit[key]), key
        # summation order only: up to 2.4e-5 after 8 LAMB steps on an AVX-512 Xeon, under
        # 1e-5 on an AVX2 EPYC; 8 steps on half the batches move weights by up to 1e-2
        assert torch.allclose(value, whole[key], atol=1e-4), key
    logged_steps = [set(scalars(runs[n])["loss/total"]) for n in ("derived", "whole")]
    assert logged_steps[0] == logged_steps[1] == set(range(1, 9))


def test_zero_epochs_between_evaluations_and_checkpoints_means_only_at_the_end(tmp_path,
                                                                               tiny_run):
    """eval.every_epochs=0 and checkpoint.every_epochs=0 (a ZeroDivisionError once): the final
    evaluation and checkpoint only."""
    run_dir = tmp_path / "run"
    result = train_in_process(tiny_run(run_dir, "eval.every_epochs=0",
                                       "checkpoint.every_epochs=0", "run.log_every=1"))
    assert result.finished and result.steps == 8
    assert list(scalars(run_dir)["eval/top1"]) == [8]
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_000000008"]


# run.threads: torch's intra-op threads while the run trains, the process's own afterwards
@pytest.mark.parametrize("overrides, omp_env, inside", [
    (["data.workers=1"], None, 2),  # auto: the cores (3 here) less the loader's workers
    (["data.workers=4"], None, 1),  # at least one
    (["data.workers=1", "run.threads=4"], None, 4),  # the recipe's count
    (["data.workers=1"], "3", 3),  # auto leaves a launcher's (or user's) OMP_NUM_THREADS alone
])
def test_run_threads_set_torch_threads_for_the_run_only(tmp_path, tiny_run, monkeypatch,
                                                        overrides, omp_env, inside):
    from scalekd.engine.students import DistillationModel

    seen, forward = [], DistillationModel.forward

    def recording(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(DistillationModel, "forward", recording)
    if omp_env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp_env)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        train_in_process(tiny_run(tmp_path / "run", "run.max_steps=2", "eval.teacher=false",
                                  *overrides))
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {inside}
