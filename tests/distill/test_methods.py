"""What every teacher-based method shares: its label loss (CE or BCE, integer labels or Mixup
soft targets) against an independent formula, finite gradients under bf16 autocast, and
weight keys checked against its terms."""

import pytest
import torch
import torch.nn.functional as F

from scalekd.distill import create_distiller
from scalekd.models.teacher import TeacherOutput
from scalekd.engine.validation import validate
from scalekd.recipe import Recipe, RecipeError, apply_overrides

METHODS = ["kd", "bkd", "bkl", "dkd", "dist"]
S = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.5, -1.0, 1.5, 0.2]])
T = torch.tensor([[3.0, 0.0, 1.0, 0.5], [0.0, 0.3, 2.0, -2.0]])


def distiller(method, *overrides, num_classes=4):
    return create_distiller(apply_overrides(Recipe(), [f"distill.method={method}", *overrides]),
                            num_classes)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["ce", "bce"])
@pytest.mark.parametrize("targets", [torch.tensor([0, 3]),
                                     torch.tensor([[0.7, 0.3, 0.0, 0.0], [0.0, 0.0, 0.4, 0.6]])],
                         ids=["labels", "mixup"])
def test_hard_term(method, kind, targets):
    terms = distiller(method, f"distill.hard_loss={kind}")(S, TeacherOutput(T), targets)
    probs = targets if targets.ndim == 2 else F.one_hot(targets, 4).float()
    want = (-(probs * S.log_softmax(-1)).sum(-1).mean() if kind == "ce"
            else F.binary_cross_entropy_with_logits(S, probs))  # timm's BCE: element mean
    assert terms["hard"].item() == pytest.approx(want.item(), rel=1e-5)
    assert all(torch.isfinite(v) for v in terms.values())


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("targets", [torch.tensor([0, 3, -1]),
                                     torch.tensor([[0.7, 0.3, 0.0, 0.0], [0.0, 0.0, 0.4, 0.6],
                                                   [0.1, 0.2, 0.3, 0.4]])],
                         ids=["labels+unlabelled", "mixup"])
def test_label_loss_reductions(smoothing, targets):
    """bce with distill.bce_reduction=sum_classes is mmcls's CrossEntropyLoss(use_sigmoid=True)
    with avg_factor=batch (ScaleKD's label loss): summed over classes, / batch, C x timm's mean;
    ce is the per-image cross-entropy against (1 - eps) one-hot + eps / C, batch mean (timm's
    and mmcls's 'original' label smoothing alike). Unlabelled images (-1) add nothing."""
    s = torch.cat([S, torch.tensor([[1.0, 0.0, -2.0, 0.5]])])
    labelled = targets >= 0 if targets.ndim == 1 else torch.ones(3, dtype=torch.bool)
    probs = (targets if targets.ndim == 2 else
             F.one_hot(targets.clamp(min=0), 4).float() * (1 - smoothing) + smoothing / 4)
    per_class = F.binary_cross_entropy_with_logits(s, probs, reduction="none")
    mmcls = (per_class.sum(-1) * labelled).sum() / 3  # loss.sum() / avg_factor, the batch
    ce = (-(probs * s.log_softmax(-1)).sum(-1) * labelled).sum() / 3

    def hard(*overrides):
        d = distiller("kd", f"aug.smoothing={smoothing}", *overrides)
        return d(s, TeacherOutput(torch.cat([T, T[:1]])), targets)["hard"].item()

    assert hard("distill.hard_loss=bce", "distill.bce_reduction=sum_classes") == pytest.approx(
        mmcls.item(), rel=1e-5)
    assert hard("distill.hard_loss=bce") == pytest.approx(mmcls.item() / 4, rel=1e-5)
    assert hard("distill.hard_loss=ce") == pytest.approx(ce.item(), rel=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_gradients_finite_under_bf16_autocast(method):
    torch.manual_seed(0)
    s = torch.randn(8, 1000, requires_grad=True)
    t = torch.randn(8, 1000) * 5
    mixed = torch.softmax(torch.randn(8, 1000), -1)  # soft targets, as Mixup/CutMix give
    d = distiller(method, "distill.hard_loss=bce", "distill.temperature=4", num_classes=1000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = s @ torch.eye(1000)
        terms = d(logits, TeacherOutput(t), mixed)
        loss = d.total(terms)
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert set(terms) == set(d.loss_terms)


@pytest.mark.parametrize("method", METHODS)
def test_weights_must_name_the_methods_terms(method):
    def problems(*overrides):
        with pytest.raises(RecipeError) as err:  # no data or weights given: it always fails
            validate(apply_overrides(Recipe(), [f"distill.method={method}", *overrides]))
        return str(err.value)

    assert f"not terms of '{method}'" in problems("distill.weights.crd=1")
    assert "distill.bce_reduction='sum' must be mean or sum_classes" in problems(
        "distill.bce_reduction=sum")
    own = next(iter(set(distiller(method).loss_terms) - {"hard"}))
    assert "not terms of" not in problems(f"distill.weights.{own}=2")
