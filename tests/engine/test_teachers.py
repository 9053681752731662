"""The teacher as the training loop calls it: one call per batch, whatever the teacher is, built
from what the students' methods declare they read (Distiller.teacher_needs). The ZeRO-3 sharded
teacher is trained with in tests/engine/test_distributed.py (two processes)."""

import pytest
import torch

import scalekd.engine.teachers as teachers
from helpers.runs import tiny_overrides
from scalekd.data.loader import Batch
from scalekd.engine.teachers import (CachedTeacher, OnlineTeacher, Teacher, build_teacher,
                                     teacher_needs)
from scalekd.models.teacher import TeacherNeeds
from scalekd.recipe import Recipe, apply_overrides, student_recipes

CPU = torch.device("cpu")
SUPERVISED = ["distill.method=supervised", "distill.weights={}"]


def specs(recipe: Recipe):
    return student_recipes(recipe).values()


@pytest.mark.parametrize("overrides, needs", [
    (SUPERVISED, None),
    (["distill.method=dkd", "distill.weights={}"], TeacherNeeds()),
    (["distill.method=scalekd", "distill.weights={}", "distill.tpp_blocks=1"],
     TeacherNeeds(features=True, proxy=True, proxy_blocks=1)),
    (["distill.method=scalekd", "distill.weights={}", "distill.tpp=false"],
     TeacherNeeds(features=True)),
    # one teacher pass serves every student: what any of them reads
    ([*SUPERVISED, "students.k.distill.method=dkd", "students.k.distill.weights={}",
      "students.s.distill.method=scalekd", "students.s.distill.weights={}"],
     TeacherNeeds(features=True, proxy=True)),
])
def test_the_methods_declare_what_the_teacher_provides(overrides, needs):
    assert teacher_needs(specs(apply_overrides(Recipe(), overrides))) == needs


def test_no_teacher_and_a_cached_teacher_build_no_model(monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a teacher model was built")

    monkeypatch.setattr(teachers, "recipe_teacher", no_model)
    images, targets = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    supervised = apply_overrides(Recipe(), SUPERVISED)
    none = build_teacher(supervised, specs(supervised), 3, CPU)
    assert type(none) is Teacher and none(Batch(images, targets)) is None
    assert none.evaluate([], None) is None and none.feature_shapes is None

    cached_recipe = apply_overrides(Recipe(), ["teacher.mode=cached"])
    cached = build_teacher(cached_recipe, specs(cached_recipe), 3, CPU)
    probs = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.0, 1.0]])
    out = cached(Batch(images, targets, probs))
    assert isinstance(cached, CachedTeacher) and cached.evaluate([], None) is None
    # the stored distributions as log-probabilities, finite where a class has no mass
    assert torch.isfinite(out.logits).all()
    assert torch.allclose(out.logits.softmax(-1), probs, atol=1e-6)


def test_an_online_teacher_runs_on_the_batchs_pixels(tiny_teacher, tmp_path):
    recipe = apply_overrides(Recipe(), tiny_overrides(tmp_path, tiny_teacher,
                                                      "distill.method=scalekd",
                                                      "distill.weights={}"))
    rng = torch.get_rng_state()
    teacher = build_teacher(recipe, specs(recipe), 10, CPU)
    assert torch.equal(torch.get_rng_state(), rng)  # the students' seeded draws untouched
    assert isinstance(teacher, OnlineTeacher)
    assert set(teacher.feature_shapes) == {"final", "split"}  # the projectors' sizes
    images = torch.randn(2, 3, 32, 32)
    out = teacher(Batch(images, torch.tensor([1, 2])))
    assert torch.equal(out.logits, teacher.model(images).logits)
    assert set(out.features) == {"final", "split"} and out.proxy is not None  # distill.tpp
