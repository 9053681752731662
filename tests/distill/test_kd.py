"""Loss values against formulas written out by hand on small logits."""

import math

import pytest
import torch

from scalekd.distill import create_distiller
from scalekd.distill.kd import kd_loss
from scalekd.models.teacher import TeacherOutput
from scalekd.recipe import Recipe, apply_overrides

S = torch.tensor([[2.0, 1.0, 0.0], [0.5, -1.0, 1.5]])
T = torch.tensor([[3.0, 0.0, 1.0], [0.0, 0.0, 2.0]])


def softmax(row, t):
    e = [math.exp(v / t) for v in row]
    return [x / sum(e) for x in e]


def hand_kd(t_temp):
    total = 0.0
    for s_row, t_row in zip(S.tolist(), T.tolist()):
        p_t, p_s = softmax(t_row, t_temp), softmax(s_row, t_temp)
        total += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    return total / len(S) * t_temp**2


@pytest.mark.parametrize("temperature", [1.0, 4.0, 0.5])
def test_kd_matches_hand_computed(temperature):
    assert kd_loss(S, T, temperature).item() == pytest.approx(hand_kd(temperature), rel=1e-5)


def test_kd_is_zero_when_student_equals_teacher():
    assert kd_loss(T, T, 2.0).item() == pytest.approx(0.0, abs=1e-7)


def distiller(*overrides):
    return create_distiller(apply_overrides(Recipe(), list(overrides)), num_classes=3)


def hand_ce(labels, smoothing=0.0):
    total = 0.0
    for row, y in zip(S.tolist(), labels):
        logp = [v - math.log(sum(math.exp(u) for u in row)) for v in row]
        total += -(1 - smoothing) * logp[y] - smoothing * sum(logp) / len(row)
    return total / len(S)


def hand_bce(targets):
    total = 0.0
    for row, t_row in zip(S.tolist(), targets):
        for x, t in zip(row, t_row):
            p = 1 / (1 + math.exp(-x))
            total += -(t * math.log(p) + (1 - t) * math.log(1 - p))
    return total / (len(S) * len(S[0]))


def test_kd_distiller_terms_and_weights():
    d = distiller("distill.hard_loss=ce", "distill.temperature=2", "distill.weights.kd=0.7")
    labels = torch.tensor([0, 2])
    terms = d(S, TeacherOutput(T), labels)
    assert terms["hard"].item() == pytest.approx(hand_ce([0, 2]), rel=1e-5)
    assert terms["kd"].item() == pytest.approx(hand_kd(2.0), rel=1e-5)
    assert d.total(terms).item() == pytest.approx(0.5 * hand_ce([0, 2]) + 0.7 * hand_kd(2.0),
                                                  rel=1e-5)


def test_ce_with_label_smoothing():
    d = distiller("distill.hard_loss=ce", "aug.smoothing=0.1")
    got = d(S, TeacherOutput(T), torch.tensor([1, 0]))["hard"].item()
    assert got == pytest.approx(hand_ce([1, 0], smoothing=0.1), rel=1e-5)


def test_bce_with_smoothing_matches_timm_semantics():
    # timm's BCE: one-hot targets smoothed to off = s/C, on = 1 - s + s/C
    d = distiller("distill.hard_loss=bce", "aug.smoothing=0.3")
    off, on = 0.1, 1 - 0.3 + 0.1
    want = hand_bce([[on, off, off], [off, off, on]])
    assert d(S, TeacherOutput(T), torch.tensor([0, 2]))["hard"].item() == pytest.approx(want,
                                                                                        rel=1e-5)


@pytest.mark.parametrize("kind", ["ce", "bce"])
def test_mixup_soft_targets(kind):
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.4, 0.6]])
    d = distiller(f"distill.hard_loss={kind}")
    got = d(S, TeacherOutput(T), soft)["hard"].item()
    if kind == "bce":
        want = hand_bce(soft.tolist())
    else:
        want = sum(-sum(t * (v - math.log(sum(math.exp(u) for u in row)))
                        for v, t in zip(row, t_row))
                   for row, t_row in zip(S.tolist(), soft.tolist())) / 2
    assert got == pytest.approx(want, rel=1e-5)


def test_unlabelled_images_only_feed_kd():
    d = distiller("distill.hard_loss=ce")
    terms = d(S, TeacherOutput(T), torch.tensor([-1, 2]))  # -1: no label
    row2 = -(S[1, 2] - torch.logsumexp(S[1], 0)).item()
    assert terms["hard"].item() == pytest.approx(row2 / 2, rel=1e-5)  # a mean over the batch
    assert terms["kd"].item() == pytest.approx(hand_kd(1.0), rel=1e-5)
    assert d(S, TeacherOutput(T), torch.tensor([-1, -1]))["hard"].item() == 0.0


def test_gradients_finite_under_bf16_autocast():
    s = torch.randn(8, 1000, requires_grad=True)
    t = torch.randn(8, 1000) * 5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = s @ torch.eye(1000)
        d = distiller("distill.hard_loss=bce", "distill.temperature=4")
        loss = d.total(d(logits, TeacherOutput(t), torch.randint(0, 1000, (8,))))
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_supervised_has_no_teacher_term():
    d = distiller("distill.method=supervised", "distill.hard_loss=ce")
    assert not d.needs_teacher
    assert set(d(S, None, torch.tensor([0, 1]))) == {"hard"}
