"""Binary KD: BCE against the teacher's probabilities ("bkd") and VanillaKD's eq. 3 ("bkl"),
against the formulas by hand; by default at the scale of VanillaKD's released loss (mean over
classes), eq. 3's sum over classes with distill.bce_reduction=sum_classes."""

import math
import runpy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from scalekd.distill import create_distiller
from scalekd.distill.bkd import binary_kd_loss
from scalekd.models.teacher import TeacherOutput
from scalekd.recipe import Recipe, apply_overrides

S = torch.tensor([[2.0, 1.0, 0.0], [0.5, -1.0, 1.5]])
T = torch.tensor([[3.0, 0.0, 1.0], [0.0, 0.0, 2.0]])


def softmax(row, t):
    e = [math.exp(v / t) for v in row]
    return [x / sum(e) for x in e]


def hand(temp, kind, sum_classes=True):
    """Summed (or averaged) over classes, averaged over the batch, times T^2; eq. 3 written as
    printed."""
    total = 0.0
    for s_row, t_row in zip(S.tolist(), T.tolist()):
        for s, p in zip(s_row, softmax(t_row, temp)):
            q = 1 / (1 + math.exp(-s / temp))
            if kind == "bce_kd":
                total += -(p * math.log(q) + (1 - p) * math.log(1 - q))
            else:
                total += -p * math.log(q / p) - (1 - p) * math.log((1 - q) / (1 - p))
    return total / len(S) * temp**2 / (1 if sum_classes else S.shape[1])


def distiller(method, *overrides):
    return create_distiller(apply_overrides(Recipe(), [f"distill.method={method}", *overrides]),
                            num_classes=3)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 0.5])
def test_bce_kd_and_bkl_match_hand_computed(temperature):
    bce = binary_kd_loss(S, T, temperature)
    bkl = binary_kd_loss(S, T, temperature, divergence=True)
    assert bce.item() == pytest.approx(hand(temperature, "bce_kd"), rel=1e-5)
    assert bkl.item() == pytest.approx(hand(temperature, "bkl"), rel=1e-5)


def test_bkl_is_zero_at_the_teachers_probabilities_and_shares_bce_gradients():
    p = torch.softmax(T / 2, -1)
    matched = 2 * torch.log(p / (1 - p))  # sigmoid(s/2) = p
    assert binary_kd_loss(matched, T, 2.0, divergence=True).item() == pytest.approx(0, abs=1e-5)
    grads = []
    for divergence in (False, True):
        s = S.clone().requires_grad_()
        binary_kd_loss(s, T, 2.0, divergence).backward()
        grads.append(s.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_teacher_ruling_a_class_out_keeps_bkl_finite():
    t = torch.tensor([[200.0, -200.0, 0.0]])  # softmax gives exactly 0 for class 1
    assert torch.isfinite(binary_kd_loss(S[:1], t, 1.0, divergence=True))


@pytest.mark.parametrize("method, term", [("bkd", "bce_kd"), ("bkl", "bkl")])
@pytest.mark.parametrize("reduction", ["mean", "sum_classes"])
def test_distiller_terms_and_weights(method, term, reduction):
    summed = reduction == "sum_classes"
    d = distiller(method, "distill.hard_loss=ce", "distill.temperature=2",
                  f"distill.bce_reduction={reduction}")
    terms = d(S, TeacherOutput(T), torch.tensor([0, 2]))
    assert set(terms) == {"hard", term}
    assert terms[term].item() == pytest.approx(hand(2.0, term, summed), rel=1e-5)
    assert d.total(terms).item() == pytest.approx(
        0.5 * terms["hard"].item() + 0.5 * hand(2.0, term, summed), rel=1e-5)
    d = distiller(method, "distill.hard_loss=none", f"distill.weights.{term}=2",
                  f"distill.bce_reduction={reduction}")
    terms = d(S, TeacherOutput(T), torch.tensor([0, 2]))  # Table 4's "-": no label loss
    assert set(terms) == {term}
    assert d.total(terms).item() == pytest.approx(2 * hand(1.0, term, summed), rel=1e-5)


RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.mark.parametrize("recipe_file", ["in1k_a1.py", "in1k_a2.py"])
def test_a1_a2_bkd_is_vanillakds_released_loss(recipe_file):
    """`distill.method=bkd` on A1/A2 computes VanillaKD's BinaryKLDiv (losses/bkd.py:
    BCE-with-logits of z_s against softmax(z_t), torch's mean) with nothing divided by hand."""
    recipe = apply_overrides(runpy.run_path(str(RECIPES / recipe_file))["recipe"](),
                             ["distill.method=bkd", "distill.hard_loss=none"])
    d = create_distiller(recipe, num_classes=1000)
    torch.manual_seed(0)
    s, t = torch.randn(4, 1000) * 3, torch.randn(4, 1000) * 3
    released = F.binary_cross_entropy_with_logits(s, t.softmax(1))
    assert d(s, TeacherOutput(t), torch.tensor([0, 1, 2, 3]))["bce_kd"].item() == pytest.approx(
        released.item(), rel=1e-5)
    summed = create_distiller(apply_overrides(recipe, ["distill.bce_reduction=sum_classes"]),
                              num_classes=1000)  # eq. 3 as printed: 1000x
    assert summed(s, TeacherOutput(t), torch.tensor([0, 1, 2, 3]))["bce_kd"].item() == (
        pytest.approx(1000 * released.item(), rel=1e-5))
