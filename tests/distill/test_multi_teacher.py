"""distill.method=multi_teacher on hand-made tensors: its terms (one teacher feeding KD alone is
`kd`), the per-teacher heads, the fitted standardisation, per-teacher weights, teacher drop,
and the recipe problems named before any compute."""

import pytest
import torch

from scalekd.distill import DISTILLERS, FeatureShapes, create_distiller
from scalekd.distill.multi_teacher import Standardiser
from scalekd.engine.validation import validate
from scalekd.models.teacher import TeacherOutput
from scalekd.recipe import Recipe, RecipeError, apply_overrides

WIDTH, CLASSES = 6, 3
TWO = ["distill.method=multi_teacher", "distill.weights={}", "teachers.vit.name=vit_tiny_patch16_224",
       "teachers.cnn.name=resnet18"]


def distiller(*overrides, widths=(("vit", 4), ("cnn", 5))):
    recipe = apply_overrides(Recipe(), [*TWO, *overrides])
    shapes = FeatureShapes([(WIDTH,)], {name: (w,) for name, w in widths})
    return create_distiller(recipe, CLASSES, shapes)


def outputs(batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {name: TeacherOutput(torch.randn(batch, CLASSES, generator=g),
                                embedding=torch.randn(batch, width, generator=g) * scale + shift)
            for name, width, scale, shift in (("vit", 4, 10.0, 3.0), ("cnn", 5, 0.1, -1.0))}


def student(batch=4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, CLASSES, generator=g), torch.randn(batch, WIDTH, generator=g)


def test_one_teacher_feeding_kd_is_vanilla_kd():
    recipe = apply_overrides(Recipe(), ["distill.method=multi_teacher", "distill.weights={}",
                                        "teachers.t.name=resnet18",
                                        "distill.options.feeds.t=kd", "distill.temperature=4"])
    multi = create_distiller(recipe, CLASSES, FeatureShapes([(WIDTH,)], {"t": (5,)}))
    kd = create_distiller(apply_overrides(Recipe(), ["distill.temperature=4"]), CLASSES)
    logits, embedding = student()
    teacher = outputs()["cnn"]
    targets = torch.tensor([0, 1, 2, 0])
    got = multi(logits, {"t": teacher}, targets, student_embedding=embedding)
    want = kd(logits, teacher, targets)
    assert got == {"kd.t": want["kd"], "hard": want["hard"]}
    assert multi.total(got) == kd.total(want)
    assert not list(multi.parameters())  # the main teacher uses the student's own classifier


def test_each_teacher_feeds_its_terms_through_its_own_heads():
    d = distiller()
    assert set(d.logit_heads) == {"cnn"}  # vit, the first teacher, is the main one
    assert {n: h.out_features for n, h in d.feature_heads.items()} == {"vit": 4, "cnn": 5}
    logits, embedding = student()
    terms = d(logits, outputs(), torch.tensor([0, 1, 2, 0]), student_embedding=embedding)
    assert set(terms) == {"hard", "kd.vit", "kd.cnn", "feature.vit", "feature.cnn"}
    # each term reaches the student's features: gradients flow into its own head
    embedding.requires_grad_(True)
    terms = d(logits, outputs(), torch.tensor([0, 1, 2, 0]), student_embedding=embedding)
    terms["feature.cnn"].backward()
    assert d.feature_heads["cnn"].weight.grad is not None
    assert d.feature_heads["vit"].weight.grad is None and embedding.grad.abs().sum() > 0

    only = distiller("distill.options.feeds.vit=feature", "distill.options.feeds.cnn=kd")
    terms = only(logits, outputs(), torch.tensor([0, 1, 2, 0]), student_embedding=embedding)
    assert set(terms) == {"hard", "feature.vit", "kd.cnn"}
    assert set(only.standardisers) == {"vit"} and set(only.logit_heads) == {"cnn"}


def test_the_standardisation_is_fitted_per_channel_over_the_sample():
    d = distiller()
    assert d.fit_batches() == 8  # unfitted
    sample = [outputs(seed=s) for s in range(3)]
    d.fit(sample)
    assert d.fit_batches() == 0  # fitted: a resume that loads the buffers does not refit
    for name in ("vit", "cnn"):
        seen = torch.cat([o[name].embedding for o in sample])
        z = d.standardisers[name](seen)
        assert torch.allclose(z.mean(0), torch.zeros(z.shape[1]), atol=1e-5)
        assert torch.allclose(z.std(0, unbiased=False), torch.ones(z.shape[1]), atol=1e-3)
    state = d.state_dict()  # buffers: saved and loaded with the student's checkpoint
    assert {"standardisers.vit.mean", "standardisers.vit.std", "standardisers.vit.fitted"} <= set(
        state)
    fresh = distiller()
    fresh.load_state_dict(state)
    assert fresh.fit_batches() == 0


def test_a_dead_channel_stays_finite():
    s = Standardiser(2)
    s.fit(torch.tensor([[0.0, 1.0], [0.0, 3.0]]))
    assert torch.isfinite(s(torch.tensor([[0.0, 2.0]]))).all()


def test_teacher_weights_and_a_dropped_teacher_in_the_total():
    d = distiller("distill.options.teacher_weights.cnn=0.25", "distill.weights.kd=2")
    terms = {"hard": torch.tensor(1.0), "kd.vit": torch.tensor(3.0), "kd.cnn": torch.tensor(4.0),
             "feature.cnn": torch.tensor(8.0)}
    assert d.total(terms) == 0.5 * 1 + 2 * 3 + 2 * 0.25 * 4 + 1 * 0.25 * 8
    d.dropped = "cnn"
    assert d.total(terms) == 0.5 * 1 + 2 * 3

    drop = distiller("distill.options.drop_teacher=0.5")
    logits, embedding = student()
    torch.manual_seed(0)
    seen = []
    for _ in range(40):
        drop(logits, outputs(), torch.tensor([0, 1, 2, 0]), student_embedding=embedding)
        seen.append(drop.dropped)
    assert set(seen) == {"", "vit", "cnn"}
    torch.manual_seed(0)  # the draws come from the run's (seeded, resumed) torch stream
    again = []
    for _ in range(40):
        drop(logits, outputs(), torch.tensor([0, 1, 2, 0]), student_embedding=embedding)
        again.append(drop.dropped)
    assert again == seen
    drop.eval()
    drop(logits, outputs(), torch.tensor([0, 1, 2, 0]), student_embedding=embedding)
    assert drop.dropped == ""


def problems(*overrides, base=TWO):
    with pytest.raises(RecipeError) as err:
        validate(apply_overrides(Recipe(), ["data.source=synthetic", *base, *overrides]))
    return "\n".join(err.value.problems)


@pytest.mark.parametrize("overrides, base, expected", [
    ([], ["distill.method=multi_teacher"],
     "distill.method='multi_teacher' reads several teachers: set teachers.<name>.name"),
    (["distill.method=kd"], TWO, "teachers.* (vit, cnn) is read by methods of several teachers"),
    (["teacher.name=resnet18"], TWO, "teacher.name set beside teachers.*"),
    ([], TWO, "teacher 'resnet18' has no weights: pass teachers.cnn.checkpoint="),
    (["teachers.cnn.checkpoint=/nowhere.safetensors"], TWO,
     "teachers.cnn.checkpoint='/nowhere.safetensors' does not exist"),
    (["teachers.cnn.dtype=fp16"], TWO, "teachers.cnn.dtype must be bf16 or fp32"),
    (["teachers.cnn.compile=true"], TWO, "teachers.cnn.compile=true"),
    (["teachers.cnn.name=resnet_nope"], TWO, "teachers.cnn.name"),
    (["teachers.cnn.mode=cached"], TWO, "teachers.cnn.mode='cached': every teacher"),
    (["distill.options.feeds.vvit=kd"], TWO,
     "distill.options.feeds names ['vvit'], not teachers of recipe.teachers"),
    (["distill.options.feeds.vit=logits"], TWO,
     "distill.options.feeds.vit='logits' must be kd, feature or kd,feature"),
    (["distill.options.feature_loss=l2"], TWO, "feature_loss='l2' must be cosine or smooth_l1"),
    (["distill.options.drop_teacher=0.5"], ["distill.method=multi_teacher",
                                            "teachers.t.name=resnet18"],
     "drops one of several teachers"),
])
def test_bad_settings_are_named_with_the_fix(overrides, base, expected):
    assert expected in problems(*overrides, base=base)


def test_an_unknown_teacher_field_is_named():
    assert "unknown key 'teachers.cnn.nme'" in problems("teachers.cnn.nme=resnet18")


def test_the_method_is_registered_as_reading_several_teachers():
    cls = DISTILLERS["multi_teacher"]
    assert cls.reads_teachers and cls.needs_embedding and not cls.needs_features
