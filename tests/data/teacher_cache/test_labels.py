"""Soft labels from the stored top-k: with k = C every logit method gets its online loss, with a
small tail a close one; Mixup/CutMix mix them with the images' lambda and pairing."""

import pytest
import torch
import torch.nn.functional as F

from scalekd.distill.bkd import binary_kd_loss
from scalekd.distill.dist_relations import dist_loss
from scalekd.distill.dkd import dkd_loss
from scalekd.kernels.kd_loss import kd_loss
from scalekd.data.teacher_cache.labels import SoftLabelMixup, dense_probs
from scalekd.models.teacher import soft_label_output as teacher_output

C = 10


def stored(teacher_logits: torch.Tensor, k: int, dtype=torch.float32):
    """What the cache keeps of `teacher_logits`: the top-k log-probabilities and classes."""
    values, classes = F.log_softmax(teacher_logits, -1).topk(k, -1)
    return values.to(dtype), classes.to(torch.int16)


def losses(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> list[float]:
    target = teacher.argmax(-1)
    return [kd_loss(student, teacher, temperature).item(),
            binary_kd_loss(student, teacher, temperature).item(),
            *[t.mean().item() for t in dkd_loss(student, teacher, target, temperature)],
            *[t.item() for t in dist_loss(student, teacher, temperature)]]


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_all_classes_stored_give_the_online_losses(temperature):
    torch.manual_seed(0)
    student, teacher = torch.randn(8, C) * 3, torch.randn(8, C) * 3
    cached = teacher_output(dense_probs(*stored(teacher, C), C)).logits
    assert losses(student, cached, temperature) == pytest.approx(
        losses(student, teacher, temperature), rel=1e-5, abs=1e-6)
    # as the cache stores them, in fp16: within fp16's precision
    cached16 = teacher_output(dense_probs(*stored(teacher, C, torch.float16), C)).logits
    assert kd_loss(student, cached16, temperature).item() == pytest.approx(
        kd_loss(student, teacher, temperature).item(), rel=2e-3)


def peaked_teacher(rows: int) -> torch.Tensor:
    """Logits whose top 3 classes hold over 99.9% of the probability."""
    logits = torch.randn(rows, C)
    logits[:, :3] += 12
    return logits


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_a_small_tail_gives_close_losses(temperature):
    torch.manual_seed(1)
    teacher, student = peaked_teacher(16), torch.randn(16, C) * 2
    values, classes = stored(teacher, 3)
    assert (values.exp().sum(-1) > 0.999).all()
    probs = dense_probs(values, classes, C)
    assert torch.allclose(probs.sum(-1), torch.ones(16), atol=1e-6)
    rest = (1 - values.exp().sum(-1, keepdim=True)) / (C - 3)  # spread evenly over the others
    others = torch.ones(16, C, dtype=torch.bool).scatter_(1, classes.long(), False)
    assert torch.allclose(probs[others], rest.expand(16, C)[others])
    online = kd_loss(student, teacher, temperature).item()
    assert kd_loss(student, teacher_output(probs).logits, temperature).item() == pytest.approx(
        online, rel=1e-2)


def test_a_tail_with_no_mass_keeps_the_losses_finite():
    teacher = torch.tensor([[0.0, -200.0, -200.0]])  # all the mass on class 0 (in fp32)
    probs = dense_probs(*stored(teacher, 1), 3)
    assert probs[0, 1:].eq(0).all()
    loss = kd_loss(torch.randn(1, 3), teacher_output(probs).logits, 1.0)
    assert torch.isfinite(loss)


def numbered_batch(n: int = 8, size: int = 16):
    """Image i is constant i + 1, label i % C, soft label peaked on (i + 3) % C."""
    images = torch.arange(1, n + 1, dtype=torch.float32).view(n, 1, 1, 1).expand(
        n, 3, size, size).clone()
    targets = torch.arange(n) % C
    soft = F.softmax(F.one_hot((torch.arange(n) + 3) % C, C) * 5.0 + torch.rand(n, C), -1)
    return images, targets, soft


def own_share(mixed: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per image, the weight of its own pixels in the mix with its partner B-1-i (Mixup: from
    the pixel values; CutMix: the share of pixels still its own)."""
    own, partner = images.flatten(1), images.flip(0).flatten(1)
    m = mixed.flatten(1)
    return ((m - partner) / (own - partner)).mean(-1)


@pytest.mark.parametrize("mode, mixup, cutmix", [
    ("batch", 0.8, 0.0), ("batch", 0.0, 1.0), ("elem", 0.8, 0.0), ("elem", 0.0, 1.0),
    ("pair", 0.8, 1.0)])
def test_mixup_mixes_soft_labels_with_the_images_lambda_and_pairing(mode, mixup, cutmix):
    torch.manual_seed(2)
    mix = SoftLabelMixup(mixup_alpha=mixup, cutmix_alpha=cutmix, mode=mode,
                         label_smoothing=0.0, num_classes=C)
    images, targets, soft = numbered_batch()
    mixed, hard, mixed_soft = mix(images.clone(), targets, soft)
    lam = own_share(mixed, images).view(-1, 1)
    assert ((lam > 0) & (lam < 1)).any()  # something was mixed
    # the soft labels are mixed exactly as the images and the hard labels
    assert torch.allclose(mixed_soft, lam * soft + (1 - lam) * soft.flip(0), atol=1e-5)
    one_hot = F.one_hot(targets, C).float()
    assert torch.allclose(hard, lam * one_hot + (1 - lam) * one_hot.flip(0), atol=1e-5)
    assert torch.allclose(mixed_soft.sum(-1), torch.ones(len(soft)), atol=1e-5)


@pytest.mark.parametrize("mode", ["batch", "elem", "pair"])
def test_images_and_labels_are_mixed_as_timms_mixup_mixes_them(mode):
    from timm.data import Mixup

    from scalekd.data.on_batch import seed_all

    images, targets, soft = numbered_batch()
    options = dict(mixup_alpha=0.8, cutmix_alpha=1.0, mode=mode, num_classes=C)
    seed_all(3)
    timms = Mixup(**options)(images.clone(), targets)
    for extra in ([soft], []):
        seed_all(3)
        ours = SoftLabelMixup(**options)(images.clone(), targets, *extra)
        assert len(ours) == 2 + len(extra)
        assert all(torch.equal(a, b) for a, b in zip(ours, timms))
