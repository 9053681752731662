"""Recipe overrides and validation: each bad input gets one clear message, before compute."""

import pytest

from scalekd.engine.validation import validate
from scalekd.recipe import (Recipe, RecipeError, apply_overrides, grad_accum_steps,
                            recipe_changes, recipe_from_dict)


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
    (["optim.name=lars", "dist.zero_stage=2"], "optim.name='lars' scales each update by a "
                                               "per-tensor trust ratio, but ZeRO-2"),
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


# ---------------------------------------------------------------------------------------------
# every field of the recipe with a value it cannot run with: a RecipeError naming the field,
# before anything is built (not a traceback later, nor a silent meaning)

SCALEKD = ["distill.method=scalekd", "distill.weights={}", "teacher.name=vit_tiny_patch16_224"]
PROBE_RUN = ["teacher.name=vit_tiny_patch16_224"]  # validated by `scalekd probe`'s own check
BAD_VALUES = {  # field -> (bad values, overrides that put it in play)
    "run.name": ([""], []), "run.dir": (["", "runs/{nope}"], []), "run.seed": (["-1"], []),
    "run.epochs": (["0"], []), "run.precision": (["fp8"], []), "run.log_every": (["0"], []),
    "run.max_steps": (["-1"], []), "run.time_budget_s": (["-1"], []),
    "run.steps_per_job": (["-1"], []), "run.on_nonfinite": (["ignore"], []),
    "run.max_skipped_steps": (["-1"], []), "run.threads": (["-1"], []),
    "run.log_with": (["", "comet", "tensorboard,nope"], []),
    "data.source": (["webdataset"], []), "data.path": (["/nope"], ["data.source=imagefolder"]),
    "data.train_split": (["", "val"], []), "data.val_split": (["", "train"], []),
    "data.batch_size": (["0", "-16"], []), "data.grad_accum": (["0"], []),
    "data.device_batch": (["-1"], []), "data.eval_batch_size": (["-1"], []),
    "data.workers": (["-1"], []), "data.input_size": (["4"], []),
    "data.labels": (["false"], []),  # with kd, which reads labels and class logits
    "data.labels_per_class": (["-3"], []), "data.classes": (["(-1,)", "(3,3)", "(10,)"], []),
    "data.num_samples": (["0"], []), "data.mixed": (["/nope"], []),
    "data.bad_files": (["ignore"], []), "data.augment_workers": (["-2"], []),
    "aug.scale": (["(0.5,0.1)", "(0,1)", "(0.5,)", "(0.5,2)"], []),
    "aug.ratio": (["(2,1)", "(0,1)"], []), "aug.hflip": (["1.5", "-0.5"], []),
    "aug.color_jitter": (["-0.4"], []), "aug.auto_augment": (["autoaugment-v9"], []),
    "aug.re_prob": (["2"], []), "aug.repeated_aug": (["0"], []), "aug.mixup": (["-1"], []),
    "aug.cutmix": (["-1"], []), "aug.smoothing": (["1", "-0.1"], []),
    "aug.interpolation": (["cubic"], []), "aug.crop_pct": (["0", "1.5"], []),
    "student.name": (["resnet5O"], []), "student.checkpoint": (["/nope.safetensors"], []),
    "student.drop_path": (["1.5", "-0.1"], []),
    "student.channels_last": (["true"], ["dist.zero_stage=2"]),
    "teacher.name": (["beit_huge_nope", ""], []), "teacher.checkpoint": (["/nope"], []),
    "teacher.input_size": (["4", "-1"], []), "teacher.dtype": (["fp16"], []),
    "teacher.attention": (["flash"], []), "teacher.placement": (["zero4"], []),
    "teacher.compile": (["true"], ["teacher.placement=zero3"]),
    "teacher.probe": (["/nope"], []), "teacher.mode": (["offline"], []),
    "teacher.cache": (["", "/nope"], ["teacher.mode=cached"]),
    "teacher.function_matching": (["true"], ["teacher.mode=cached"]),
    "distill.method": (["crd"], []), "distill.temperature": (["0", "-1"], []),
    "distill.hard_loss": (["mse"], []), "distill.bce_target_thresh": (["1.5"], []),
    "distill.weights": (["{'kd':-1}", "{'kd':'high'}", "{'crd':1}"], []),
    "distill.options": (["{'margin':1}"], []),  # kd has none (tests/distill/test_registry.py)
    "distill.dkd_warmup_epochs": (["-1"], ["distill.method=dkd"]),
    "distill.dfm_weight": (["-0.1"], SCALEKD), "distill.dfm_beta": (["1.5"], SCALEKD),
    "distill.cap_heads": (["(-1,0)", "(4,)"], SCALEKD),
    "distill.cap_softmax_scale": (["0"], SCALEKD),
    "distill.cap_norm": (["groupnorm"], SCALEKD), "distill.tpp_blocks": (["-1"], SCALEKD),
    "distill.bce_reduction": (["sum"], []),
    "optim.name": (["sgdd"], []), "optim.lr": (["0", "-1"], []),
    "optim.weight_decay": (["-1"], []), "optim.momentum": (["1.5"], []),
    "optim.clip_grad": (["-1"], []), "optim.sched": (["cosinee"], []),
    "optim.decay_epochs": (["0"], ["optim.sched=step"]),
    "optim.decay_rate": (["0", "2"], ["optim.sched=step"]),
    "optim.warmup_epochs": (["-1"], []), "optim.warmup_lr": (["-1"], []),
    "optim.min_lr": (["-1"], []),
    "ema.decay": (["1", "-0.1"], []),
    "checkpoint.every_steps": (["-1"], []), "checkpoint.every_epochs": (["-1"], []),
    "checkpoint.keep": (["0"], []), "checkpoint.resume": (["/nope"], []),
    "checkpoint.on_error": (["ignore"], []),
    "dist.zero_stage": (["1", "4"], []),
    "eval.every_epochs": (["-1"], []),
    "probe.head": (["conv"], PROBE_RUN), "probe.hidden": (["-1"], PROBE_RUN),
    "probe.blocks": (["0", "5"], PROBE_RUN), "probe.lrs": (["()", "(-1.0,)"], PROBE_RUN),
    "probe.epochs": (["0"], PROBE_RUN), "probe.batch_size": (["0"], PROBE_RUN),
    "probe.weight_decay": (["-1"], PROBE_RUN), "probe.val_fraction": (["1", "-0.1"], PROBE_RUN),
    "students": (["{'a/b':{'optim.lr':1e-3}}", "{'b':{'data.workers':2}}"], []),
    # beside teacher.* (which this recipe sets), a name that cannot tag terms, a field TeacherCfg
    # does not have; the other checks: tests/distill/test_multi_teacher.py
    "teachers": (["{'b':{'name':'resnet18'}}", "{'a/b':{'name':'resnet18'}}",
                  "{'b':{'nme':'resnet18'}}"], ["distill.method=multi_teacher"]),
}
# fields where every value of the right type means something (type errors are the overrides')
ANY_VALUE = {
    "data.unlabelled", "data.os_cache", "data.uint8", "student.pretrained", "student.kwargs",
    "teacher.pretrained", "teacher.kwargs", "teacher.channels_last", "distill.tpp",
    "student.compile",
    "eval.teacher", "probe.patch_mean", "probe.refit",
}


def recipe_fields(node=None, prefix="") -> set[str]:
    import dataclasses

    node = node or Recipe()
    out = set()
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            out |= recipe_fields(value, f"{prefix}{f.name}.")
        else:
            out.add(f"{prefix}{f.name}")
    return out


def test_every_field_has_its_bad_values_listed():
    """A new field must join BAD_VALUES (or ANY_VALUE, saying why no value is bad)."""
    assert recipe_fields() == set(BAD_VALUES) | ANY_VALUE
    assert not set(BAD_VALUES) & ANY_VALUE


@pytest.mark.parametrize("field, value, context", [
    (field, value, context) for field, (values, context) in BAD_VALUES.items()
    for value in values])
def test_a_bad_value_of_any_field_is_a_recipe_error_naming_it(tmp_path, tiny_teacher, field,
                                                              value, context):
    from scalekd.tools.probe_teacher import check_probe_recipe

    recipe = apply_overrides(valid_recipe(tmp_path), [  # a real teacher file: its checks pass
        "student.name=vit_tiny_patch16_224", f"teacher.checkpoint={tiny_teacher}",
        "teacher.name=vit_tiny_patch16_224", "data.input_size=32", *context,
        f"{field}={value}"])
    check = check_probe_recipe if field.startswith("probe.") else validate
    with pytest.raises(RecipeError) as err:
        check(recipe)
    name = field.split(".")[-1] if field == "students" else field
    assert any(name in problem for problem in err.value.problems), err.value.problems
