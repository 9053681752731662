"""DKD: TCKD and NCKD against the formulas by hand, its decomposition of KD, its targets and
its warm-up."""

import math

import pytest
import torch

from scalekd.distill import create_distiller
from scalekd.distill.dkd import dkd_loss, dkd_target
from scalekd.distill.kd import kd_loss
from scalekd.models.teacher import TeacherOutput
from scalekd.recipe import Recipe, apply_overrides

S = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.5, -1.0, 1.5, 0.2]])
T = torch.tensor([[3.0, 0.0, 1.0, 0.5], [0.0, 0.3, 2.0, -2.0]])
LABELS = torch.tensor([0, 3])


def softmax(row, t):
    e = [math.exp(v / t) for v in row]
    return [x / sum(e) for x in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def hand_dkd(labels, temp):
    """Batch means of (TCKD, NCKD), written out from the DKD paper's definitions."""
    tckd = nckd = 0.0
    for s_row, t_row, y in zip(S.tolist(), T.tolist(), labels):
        p_s, p_t = softmax(s_row, temp), softmax(t_row, temp)
        tckd += kl([p_t[y], 1 - p_t[y]], [p_s[y], 1 - p_s[y]])
        rest_s = [p / (1 - p_s[y]) for i, p in enumerate(p_s) if i != y]
        rest_t = [p / (1 - p_t[y]) for i, p in enumerate(p_t) if i != y]
        nckd += kl(rest_t, rest_s)
    return tckd / len(S) * temp**2, nckd / len(S) * temp**2


def distiller(*overrides):
    return create_distiller(apply_overrides(Recipe(), ["distill.method=dkd", *overrides]),
                            num_classes=4)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 0.5])
def test_tckd_nckd_match_hand_computed(temperature):
    tckd, nckd = dkd_loss(S, T, LABELS, temperature)
    want_tckd, want_nckd = hand_dkd(LABELS.tolist(), temperature)
    assert tckd.mean().item() == pytest.approx(want_tckd, rel=1e-5)
    assert nckd.mean().item() == pytest.approx(want_nckd, rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_kd_is_tckd_plus_teacher_non_target_mass_times_nckd(temperature):
    torch.manual_seed(0)
    s, t = torch.randn(6, 10) * 3, torch.randn(6, 10) * 3
    target = torch.randint(0, 10, (6,))
    tckd, nckd = dkd_loss(s, t, target, temperature)
    p_target = torch.softmax(t / temperature, -1).gather(1, target[:, None])[:, 0]
    for i in range(6):  # per sample: kd_loss averages over its batch
        kd = kd_loss(s[i:i + 1], t[i:i + 1], temperature)
        assert (tckd[i] + (1 - p_target[i]) * nckd[i]).item() == pytest.approx(kd.item(),
                                                                               rel=1e-4)


def test_confident_logits_stay_finite():
    s = torch.tensor([[80.0, -80.0, 0.0]], requires_grad=True)
    tckd, nckd = dkd_loss(s, torch.tensor([[-90.0, 90.0, 0.0]]), torch.tensor([0]), 0.5)
    (tckd + nckd).sum().backward()
    assert torch.isfinite(tckd).all() and torch.isfinite(nckd).all()
    assert torch.isfinite(s.grad).all()


def test_distiller_terms_and_default_weights():
    d = distiller("distill.hard_loss=ce", "distill.temperature=2")
    terms = d(S, TeacherOutput(T), LABELS)
    tckd, nckd = hand_dkd(LABELS.tolist(), 2.0)
    assert terms["tckd"].item() == pytest.approx(tckd, rel=1e-5)
    assert terms["nckd"].item() == pytest.approx(nckd, rel=1e-5)
    want = terms["hard"].item() + 1.0 * tckd + 2.0 * nckd  # CE 1, alpha 1, beta 2
    assert d.total(terms).item() == pytest.approx(want, rel=1e-5)
    d = distiller("distill.hard_loss=ce", "distill.weights.nckd=0.5")
    terms = d(S, TeacherOutput(T), LABELS)
    assert d.total(terms).item() == pytest.approx(
        (terms["hard"] + terms["tckd"] + 0.5 * terms["nckd"]).item(), rel=1e-6)


def test_mixup_targets_use_the_dominant_class():
    # row 0: 0.7 of class 0 and 0.3 of class 1 (with smoothing 0.1 spread over 4 classes);
    # row 1: CutMix pasted 0.6 of class 2 onto class 3
    soft = torch.tensor([[0.7 * 0.925 + 0.025, 0.3 * 0.925 + 0.025, 0.025, 0.025],
                         [0.0, 0.0, 0.6, 0.4]])
    assert dkd_target(soft, T).tolist() == [0, 2]
    terms = distiller()(S, TeacherOutput(T), soft)
    tckd, nckd = hand_dkd([0, 2], 1.0)
    assert terms["tckd"].item() == pytest.approx(tckd, rel=1e-5)
    assert terms["nckd"].item() == pytest.approx(nckd, rel=1e-5)


def test_unlabelled_images_take_the_teachers_top_class():
    targets = torch.tensor([-1, 3])
    assert dkd_target(targets, T).tolist() == [0, 3]  # T[0] peaks at class 0
    terms = distiller("distill.hard_loss=ce")(S, TeacherOutput(T), targets)
    tckd, nckd = hand_dkd([0, 3], 1.0)
    assert terms["tckd"].item() == pytest.approx(tckd, rel=1e-5)
    assert terms["nckd"].item() == pytest.approx(nckd, rel=1e-5)
    row2 = -(S[1, 3] - torch.logsumexp(S[1], 0)).item()  # row 1 adds nothing to the label loss
    assert terms["hard"].item() == pytest.approx(row2 / 2, rel=1e-5)


def test_warmup_ramps_only_the_distillation_terms():
    d = distiller("distill.hard_loss=ce", "distill.dkd_warmup_epochs=4")
    terms = d(S, TeacherOutput(T), LABELS)
    hard, dkd = terms["hard"].item(), (terms["tckd"] + 2 * terms["nckd"]).item()
    # per epoch, 1-based: 1/4 through the first epoch, 2/4 through the second, ...
    for epoch, ramp in [(0.0, 0.25), (0.99, 0.25), (1.0, 0.5), (3.0, 1.0), (250.5, 1.0)]:
        d.set_epoch(epoch)
        assert d.total(terms).item() == pytest.approx(hard + ramp * dkd, rel=1e-6)
        assert d(S, TeacherOutput(T), LABELS)["tckd"].item() == terms["tckd"].item()
    off = distiller("distill.hard_loss=ce")  # default: no ramp, from the first step
    assert off.total(terms).item() == pytest.approx(hard + dkd, rel=1e-6)


def test_warmup_gives_mdistillers_factor_at_every_optimiser_step():
    """mdistiller (mdistiller/engine/trainer.py: `epoch = 1`, then +1 after each epoch; every
    step of it calls the distiller with that epoch; distillers/DKD.py line 72:
    min(epoch / warmup, 1)) against what our trainer passes: set_epoch(steps done / steps
    per epoch) before each step."""
    warmup, steps_per_epoch = 20, 7
    d = distiller("distill.dkd_warmup_epochs=20")
    terms = {"tckd": torch.tensor(1.0), "nckd": torch.tensor(0.0)}
    mdistiller_step = 0
    for epoch in range(1, 26):
        for _ in range(steps_per_epoch):
            d.set_epoch(mdistiller_step / steps_per_epoch)
            assert d.total(terms).item() == pytest.approx(min(epoch / warmup, 1.0), rel=1e-7)
            mdistiller_step += 1
