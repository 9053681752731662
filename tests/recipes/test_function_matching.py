"""recipes/function_matching.py (Beyer et al. 2022): the online teacher gets the very Mixup'd
tensor the student gets, the recipe runs end to end shrunk, and a teacher cache, which mixes
its stored outputs on the unmixed images instead, is refused before any compute."""

import math
import runpy
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from helpers.caches import cached
from helpers.runs import TINY_VIT, scalars
from scalekd.cli import run_recipe
from scalekd.data.loader import TrainData
from scalekd.engine.trainer import train
from scalekd.engine.validation import validate
from scalekd.recipe import Recipe, RecipeError, apply_overrides
from scalekd.tools.cache_teacher import writer_problems

ROOT = Path(__file__).resolve().parents[2]
FM = runpy.run_path(str(ROOT / "recipes" / "function_matching.py"))["recipe"]
REFUSED = "teacher.function_matching=true cannot use a teacher cache"


def shrunk(run_dir: Path, teacher: Path) -> list[str]:
    """The recipe on 32 synthetic images with tiny ViTs for its BiTs (pixels in [-1, 1] as
    theirs, one resolution: the teacher's input is the student's tensor unchanged), 3 steps."""
    return ["data.source=synthetic", "data.num_samples=32", "data.input_size=32",
            "data.batch_size=8", "data.workers=0",
            "student.name=vit_tiny_patch16_224", f"student.kwargs={TINY_VIT}",
            "teacher.name=vit_tiny_patch16_224", f"teacher.kwargs={TINY_VIT}",
            "teacher.pretrained=false", f"teacher.checkpoint={teacher}", "teacher.dtype=fp32",
            "eval.teacher=false", f"run.dir={run_dir}", "run.max_steps=3", "run.log_every=1"]


def test_the_recipe_as_users_run_it_validates():
    """Its BiT teacher from the hub, ImageNet's place taken by synthetic images."""
    validate(apply_overrides(FM(), ["data.source=synthetic", "data.num_samples=8192"]))


def test_the_teacher_gets_the_students_mixed_batch_and_the_recipe_runs(tmp_path, tiny_teacher,
                                                                       monkeypatch):
    seen: dict[str, list[torch.Tensor]] = {"loader": [], "teacher": [], "student": []}
    on_device = TrainData.on_device

    def before_mixup(self, batch, device):
        seen["loader"].append(batch[0].clone())  # timm's Mixup mixes in place
        return on_device(self, batch, device)

    def model_input(module, args):  # the timm models' own inputs (the teacher's is frozen)
        if isinstance(module, VisionTransformer):
            frozen = not any(p.requires_grad for p in module.parameters())
            if frozen or module.training:  # not the student's final evaluation
                seen["teacher" if frozen else "student"].append(args[0].detach().clone())

    monkeypatch.setattr(TrainData, "on_device", before_mixup)
    hook = torch.nn.modules.module.register_module_forward_pre_hook(model_input)
    try:
        result = train(apply_overrides(FM(), shrunk(tmp_path / "run", tiny_teacher)))
    finally:
        hook.remove()

    assert result.steps == 3
    assert len(seen["loader"]) == len(seen["teacher"]) == len(seen["student"]) == 3
    for raw, teacher, student in zip(seen["loader"], seen["teacher"], seen["student"]):
        assert torch.equal(teacher, student)
        # Mixup'd: one lambda mixes image i with image B-1-i (timm's pairing), on every batch
        partner, diff = raw.flip(0), (raw - raw.flip(0)).flatten()
        lam = float((teacher - partner).flatten() @ diff / (diff @ diff))
        assert 0.01 < lam < 0.99, lam
        assert torch.allclose(teacher, lam * raw + (1 - lam) * partner, atol=1e-5)
    logged = scalars(tmp_path / "run")
    assert "loss/kd" in logged and "loss/hard" not in logged  # KL alone, no labels
    assert len(logged["loss/total"]) == 3
    assert all(math.isfinite(v) for v in logged["loss/total"].values())


def test_a_teacher_cache_is_refused_with_the_problem_and_the_fix(tmp_path, tiny_teacher,
                                                                 tiny_cache):
    cache, overrides = tiny_cache
    as_written = apply_overrides(Recipe(), [*overrides, *cached(cache)])
    validate(as_written)  # the cache fits the run it was written for ...
    with pytest.raises(RecipeError) as err:  # ... but not under function matching
        validate(apply_overrides(as_written, ["teacher.function_matching=true"]))
    [problem] = err.value.problems
    assert problem.startswith(REFUSED)
    assert "a cached run mixes the two images' outputs" in problem
    assert "teacher.mode=online" in problem and "teacher.function_matching=false" in problem
    # nor is such a cache written for the recipe (`scalekd cache-teacher --recipe ...`)
    written = apply_overrides(FM(), shrunk(tmp_path / "run", tiny_teacher))
    assert [p for p in writer_problems(written) if p.startswith(REFUSED)] == [problem]


def test_the_recipe_with_a_cache_stops_before_any_compute(tmp_path, tiny_teacher, tiny_cache,
                                                          capsys):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        run_recipe(FM(), [*shrunk(run_dir, tiny_teacher), *cached(tiny_cache[0])])
    assert stopped.value.code == 2
    assert REFUSED in " ".join(capsys.readouterr().err.split())
    assert not run_dir.exists()
