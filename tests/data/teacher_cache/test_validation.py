"""teacher.mode=cached is checked with the recipe, before any compute: what a cache cannot serve
(feature methods, the ffcv source, data.uint8, data.mixed) and a cache that is not this run's are refused
with the reason; the teacher's weights are not needed."""

import json

import pytest

from helpers.caches import cached
from scalekd.engine.validation import validate
from scalekd.recipe import Recipe, RecipeError, apply_overrides


def problems(tiny_cache, *extra) -> list[str]:
    cache, overrides = tiny_cache
    try:
        validate(apply_overrides(Recipe(), [*overrides, *cached(cache), *extra]))
    except RecipeError as err:
        return err.problems
    return []


def test_a_cached_run_needs_no_teacher_weights(tiny_cache):
    assert problems(tiny_cache) == []
    assert problems(tiny_cache, "teacher.checkpoint=", "teacher.name=") == []
    # the recipe's weights file may stay on the machine that wrote the cache
    assert problems(tiny_cache, "teacher.checkpoint=/elsewhere/teacher.safetensors") == []
    for method in ("bkd", "dkd", "dist", "supervised"):
        assert problems(tiny_cache, f"distill.method={method}", "distill.weights={}") == []


def test_scalekd_is_refused_it_needs_the_online_teacher(tiny_cache):
    found = problems(tiny_cache, "distill.method=scalekd")
    assert found == ["distill.method='scalekd' needs the online teacher: it mimics the "
                     "teacher's features (and runs its stages), which a teacher cache does not "
                     "hold, only top-k logits; use teacher.mode=online, or a logit method (kd, "
                     "bkd, bkl, dkd, dist) with the cache"]
    beside = problems(tiny_cache, "students.sk.distill.method=scalekd")  # a second student
    assert any(p.startswith("students.sk: distill.method='scalekd' needs the online teacher")
               for p in beside)


@pytest.mark.parametrize("extra, message", [
    (["data.source=ffcv", "data.path=/nope"], "data.source=ffcv cannot use a teacher cache yet"),
    (["data.uint8=true"], "data.uint8=true is not supported with teacher.mode=cached yet"),
    (["data.mixed=/nope"], "data.mixed is not supported with teacher.mode=cached"),
    (["aug.interpolation=random"], "aug.interpolation=random is drawn per crop"),
    (["teacher.mode=offline"], "teacher.mode='offline' must be online or cached"),
    (["teacher.cache="], "teacher.mode=cached needs teacher.cache=DIR"),
    (["teacher.cache=/nope"], "teacher.cache='/nope' holds no teacher cache"),
    (["teacher.name=resnet18"], "holds the outputs of 'vit_tiny_patch16_224'"),
    (["aug.scale=(0.5,1.0)"], "written under another augmentation, so its crops are not "
                              "this run's: scale [0.08, 1.0] (cache) vs [0.5, 1.0]"),
    (["student.name=resnet18", "student.kwargs={}"], "mean [0.5, 0.5, 0.5] (cache) vs [0.485"),
    (["student.name=resnet18"], "student.name='resnet18': timm cannot build this model's config "
                                "(TypeError: ResNet.__init__() got an unexpected keyword argument "
                                "'img_size'); check student.kwargs="),
])
def test_what_a_cache_cannot_serve_is_refused(tiny_cache, extra, message):
    assert any(message in p for p in problems(tiny_cache, *extra)), problems(tiny_cache, *extra)


def test_an_incomplete_cache_is_refused(tmp_path, tiny_cache):
    cache, overrides = tiny_cache
    index = json.loads((cache / "index.json").read_text())
    (tmp_path / "index.json").write_text(json.dumps({**index, "complete": False}))
    found = problems((tmp_path, overrides))
    assert found == [f"teacher.cache='{tmp_path}' is incomplete: run its `scalekd "
                     "cache-teacher` command again to finish it"]
