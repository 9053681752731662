"""DIST: inter- and intra-class Pearson relations against the formulas by hand."""

import math

import pytest
import torch

from scalekd.distill import create_distiller
from scalekd.distill.dist_relations import dist_loss, pearson_rows
from scalekd.models.teacher import TeacherOutput
from scalekd.recipe import Recipe, apply_overrides

S = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.5, -1.0, 1.5, 0.2], [0.0, 0.4, -0.3, 1.0]])
T = torch.tensor([[3.0, 0.0, 1.0, 0.5], [0.0, 0.3, 2.0, -2.0], [1.0, 1.0, 0.0, 0.5]])


def softmax(row, t):
    e = [math.exp(v / t) for v in row]
    return [x / sum(e) for x in e]


def pearson(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def hand_dist(tau):
    y_s = [softmax(row, tau) for row in S.tolist()]
    y_t = [softmax(row, tau) for row in T.tolist()]
    inter = 1 - sum(pearson(a, b) for a, b in zip(y_s, y_t)) / len(y_s)
    cols_s, cols_t = list(zip(*y_s)), list(zip(*y_t))
    intra = 1 - sum(pearson(a, b) for a, b in zip(cols_s, cols_t)) / len(cols_s)
    return inter * tau**2, intra * tau**2


def distiller(*overrides):
    return create_distiller(apply_overrides(Recipe(), ["distill.method=dist", *overrides]),
                            num_classes=4)


@pytest.mark.parametrize("tau", [1.0, 4.0, 0.5])
def test_inter_intra_match_hand_computed(tau):
    inter, intra = dist_loss(S, T, tau)
    want_inter, want_intra = hand_dist(tau)
    assert inter.item() == pytest.approx(want_inter, rel=1e-5)
    assert intra.item() == pytest.approx(want_intra, rel=1e-5)


def test_pearson_ignores_shift_and_scale():
    a = torch.tensor([[0.1, 0.5, 0.2, 0.9]])
    assert pearson_rows(a, 3 * a + 0.2).item() == pytest.approx(1.0, abs=1e-6)
    assert pearson_rows(a, -a).item() == pytest.approx(-1.0, abs=1e-6)


def test_zero_when_student_equals_teacher():
    inter, intra = dist_loss(T, T, 2.0)  # float32 rounding, times tau^2
    assert inter.item() == pytest.approx(0.0, abs=1e-5)
    assert intra.item() == pytest.approx(0.0, abs=1e-5)


def test_distiller_terms_and_default_weights():
    d = distiller("distill.hard_loss=ce", "distill.temperature=4")
    terms = d(S, TeacherOutput(T), torch.tensor([0, 2, 3]))
    inter, intra = hand_dist(4.0)
    assert terms["inter"].item() == pytest.approx(inter, rel=1e-5)
    assert terms["intra"].item() == pytest.approx(intra, rel=1e-5)
    assert d.total(terms).item() == pytest.approx(terms["hard"].item() + inter + intra,
                                                  rel=1e-5)
    d = distiller("distill.weights.intra=2", "distill.weights.hard=0")
    inter, intra = hand_dist(1.0)
    assert d.total(d(S, TeacherOutput(T), torch.tensor([0, 2, 3]))).item() == pytest.approx(
        inter + 2 * intra, rel=1e-5)
