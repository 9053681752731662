"""Recipe overrides and validation: each bad input gets one clear message, before compute."""

import pytest

from scalekd.recipe import (Recipe, RecipeError, apply_overrides, grad_accum_steps,
                            recipe_changes, recipe_from_dict, validate)


def valid_recipe(tmp_path) -> Recipe:
    weights = tmp_path / "teacher.safetensors"
    weights.write_bytes(b"")
    return apply_overrides(Recipe(), [
        "data.source=synthetic", "data.num_samples=64", "data.batch_size=16",
        "student.name=resnet18", "teacher.name=resnet50", f"teacher.checkpoint={weights}",
        "optim.name=adamw",
    ])


def test_overrides_are_typed():
    r = apply_overrides(Recipe(), [
        "optim.lr=3e-3", "run.epochs=7", "ema.decay=0.999", "eval.teacher=false",
        "aug.scale=(0.5,1.0)", "student.kwargs.img_size=32", "teacher.name=vit_small_patch16_224",
        "distill.bce_target_thresh=0.2", "distill.weights.kd=2",
    ])
    assert r.optim.lr == 3e-3 and r.run.epochs == 7 and r.ema.decay == 0.999
    assert r.eval.teacher is False and r.aug.scale == (0.5, 1.0)
    assert r.student.kwargs == {"img_size": 32} and r.distill.weights == {"kd": 2}
    assert r.distill.bce_target_thresh == 0.2
    assert Recipe().optim.lr == 5e-3  # the original is untouched


def test_unknown_key_suggests_the_closest():
    with pytest.raises(RecipeError, match="did you mean 'lr'"):
        apply_overrides(Recipe(), ["optim.lrr=1"])
    with pytest.raises(RecipeError, match="unknown key 'optimizer.lr'"):
        apply_overrides(Recipe(), ["optimizer.lr=1"])


@pytest.mark.parametrize("item, message", [
    ("run.epochs=ten", "expected int"),
    ("eval.teacher=maybe", "expected true or false"),
    ("aug.scale=0.5", "expected a tuple"),
    ("optim.lr", "not of the form"),
])
def test_bad_values(item, message):
    with pytest.raises(RecipeError, match=message):
        apply_overrides(Recipe(), [item])


def test_valid_recipe_passes(tmp_path):
    validate(valid_recipe(tmp_path), world_size=2)


@pytest.mark.parametrize("overrides, message", [
    (["student.name=resnet5O"], "student.name='resnet5O' is not a timm model; close names"),
    (["teacher.name=beit_huge_nope"], "teacher.name='beit_huge_nope' is not a timm model"),
    (["distill.method=crd"], "distill.method='crd' is not a registered method"),
    (["teacher.checkpoint=", "teacher.pretrained=false"], "has no weights: pass teacher.checkpoint"),
    (["teacher.checkpoint=/nope/t.pth"], "teacher.checkpoint='/nope/t.pth' does not exist"),
    (["teacher.name="], "needs a teacher"),
    (["data.batch_size=30"], "not divisible by 4 process(es) x data.grad_accum=1"),
    (["data.batch_size=32", "data.grad_accum=3"], "not divisible by 4 process(es) x data.grad_accum=3"),
    (["data.batch_size=12", "aug.mixup=0.2"], "even per-process batch"),
    (["data.device_batch=4", "data.grad_accum=2"], "drop data.grad_accum=2"),
    (["data.batch_size=30", "data.device_batch=4"], "no accumulation count splits"),
    (["data.source=imagefolder"], "data.path is not set"),
    (["data.source=imagefolder", "data.path=/nope"], "has no train/ or val/ folder"),
    (["data.source=webdataset"], "data.source='webdataset' is unknown"),
    (["optim.lr=-1"], "optim.lr=-1.0 must be positive"),
    (["distill.temperature=0"], "distill.temperature=0.0 must be > 0"),
    (["distill.weights.crd=1"], "not terms of 'kd'"),
    (["optim.name=lamb", "dist.zero_stage=3"], "per-tensor trust ratio"),
    (["ema.decay=0.99", "dist.zero_stage=3"], "EMA would need the full student"),
    (["checkpoint.resume=/nope"], "must be auto, never, overwrite or a checkpoint folder"),
    (["students.b.data.batch_size=8"], "students.b sets ['data.batch_size'], which all students"),
    (["students.b.distill.method=nope"], "students.b: distill.method='nope' is not a registered"),
    (["students.b.optim.lr=1e-3", "dist.zero_stage=3"], "several students need DDP"),
    (["students.a/b.optim.lr=1e-3"], "a student name becomes a folder"),
    (["data.unlabelled=true"], "needs data.labels_per_class > 0"),
    (["data.unlabelled=true", "data.labels_per_class=5", "distill.method=supervised"],
     "only feed distillation terms"),
    (["data.unlabelled=true", "data.labels_per_class=5", "aug.cutmix=1"],
     "cannot mix labels of unlabelled images"),
])
def test_each_problem_is_named(tmp_path, overrides, message):
    recipe = apply_overrides(valid_recipe(tmp_path), overrides)
    with pytest.raises(RecipeError) as err:
        validate(recipe, world_size=4)
    assert message in str(err.value)


def test_all_problems_reported_at_once(tmp_path):
    recipe = apply_overrides(valid_recipe(tmp_path), ["optim.lr=0", "run.epochs=0"])
    with pytest.raises(RecipeError) as err:
        validate(recipe)
    assert len(err.value.problems) == 2


def test_recipe_changes_lists_what_a_restart_changed():
    import json

    saved = json.loads(json.dumps(Recipe().to_dict()))  # as read back from recipe.json
    now = apply_overrides(Recipe(), ["optim.lr=1e-3", "student.kwargs.img_size=32"]).to_dict()
    assert recipe_changes(saved, now) == ["optim.lr: 0.005 -> 0.001",
                                          "student.kwargs: {} -> {'img_size': 32}"]
    assert recipe_changes(saved, Recipe().to_dict()) == []


@pytest.mark.parametrize("batch, world, device_batch, accum", [
    (2048, 8, 128, 2),  # A1's global batch on 8 GPUs holding 128 images each
    (2048, 16, 128, 1),
    (2048, 1, 128, 16),
    (2048, 8, 100, 4),  # 3 micro-batches would not split 256 evenly
    (16, 2, 0, 1),  # device_batch unset: data.grad_accum
])
def test_accumulation_is_derived_from_the_process_count(batch, world, device_batch, accum):
    recipe = apply_overrides(Recipe(), [f"data.batch_size={batch}",
                                        f"data.device_batch={device_batch}"])
    assert grad_accum_steps(recipe, world) == accum


def test_a_recorded_recipe_reads_back():
    import json

    recipe = apply_overrides(Recipe(), ["aug.scale=(0.35, 1.0)", "students.b.optim.lr=1e-3",
                                        "teacher.kwargs={'img_size': 32}"])
    assert recipe_from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
