"""Decoupled KD (Zhao et al., CVPR 2022): KD split at the target class into
TCKD, the binary KL of the (target, all others) probability mass, and NCKD, the KL among the
non-target classes renormalised, so that per sample KD = TCKD + (1 - p_target^teacher) * NCKD.
DKD drops that teacher-confidence factor and weights the two freely: alpha=1, beta=2 (the
`loss_terms` defaults; VanillaKD, appendix C; mdistiller also uses beta=0.5 for ResNet-34 ->
ResNet-18), the label loss at 1 as in the original. Both terms are T^2-scaled, batch means.

Targets. DKD needs a target class for every image:
- integer labels: the label;
- Mixup/CutMix soft targets: their argmax, the class with the larger mixing weight (for
  CutMix, the class covering more of the image). It is the label most of the image carries,
  what DKD under Mixup does in OFA-KD (`label.max(1)[1]`, by VanillaKD's first author), and
  label smoothing leaves the argmax unchanged. An exact 50/50 tie takes the lower class
  index, which only changes which of the two mixed classes is called the target;
- unlabelled images (-1): the teacher's top class. The decomposition holds for any class, so
  such images still pass on all of the teacher's distribution (TCKD + NCKD stays a split
  of KD) instead of being dropped from the only terms that can use them.

Warm-up: as the original (mdistiller, mdistiller/distillers/DKD.py line 72), TCKD and NCKD
are multiplied by min(epoch / warmup, 1) with the 1-based integer epoch (mdistiller's trainer
counts epochs from 1 and passes the current one to every step): constant within an epoch, 1 /
warmup in the first. warmup=20 on CIFAR-100, 1 on ImageNet (so no ramp there), and
VanillaKD's training script passes no epoch to its DKD loss. Here `distill.dkd_warmup_epochs`
(default 0: off) sets warmup; the epoch comes from the optimiser steps done (`set_epoch`), so
the same optimiser step gets the same factor as in mdistiller. The label loss is not ramped,
as in the original.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from scalekd.distill.base import Distiller, register_distiller


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
             temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (TCKD, NCKD), each T^2 * KL(teacher || student), shape (batch,)."""

    # each row's columns but the target's, in order: the target column removed exactly (a
    # gather, not a boolean mask, whose size the host would have to wait for)
    columns = torch.arange(student_logits.shape[-1] - 1, device=target.device)
    not_target = columns + (columns >= target[:, None])

    def split(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = logits.float() / temperature
        others = z.gather(1, not_target)
        # log of (p_target, 1 - p_target), from logits so a near-certain class cannot underflow
        binary = torch.stack([z.gather(1, target[:, None])[:, 0], others.logsumexp(-1)],
                             -1).log_softmax(-1)
        return binary, others.log_softmax(-1)

    (binary_s, others_s), (binary_t, others_t) = split(student_logits), split(teacher_logits)

    def kl(log_s: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
        return F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(-1)

    return kl(binary_s, binary_t) * temperature**2, kl(others_s, others_t) * temperature**2


def dkd_warmup_factor(epoch: float, warmup_epochs: float) -> float:
    """mdistiller's min(e / warmup, 1), e the 1-based number of the epoch under way, from the
    fractional epoch `set_epoch` gets (optimiser steps done / steps per epoch); 1 without
    warm-up."""
    if warmup_epochs <= 0:
        return 1.0
    return min((math.floor(epoch) + 1) / warmup_epochs, 1.0)


def dkd_target(targets: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """The target class of each image (see the module docstring for why)."""
    if targets.ndim == 2:
        return targets.argmax(-1)
    return torch.where(targets >= 0, targets, teacher_logits.argmax(-1))


@register_distiller("dkd")
class DecoupledKD(Distiller):
    listed_at = 3
    loss_terms = {"hard": 1.0, "tckd": 1.0, "nckd": 2.0}

    def __init__(self, recipe, num_classes):
        super().__init__(recipe, num_classes)
        self.warmup_epochs = recipe.distill.dkd_warmup_epochs
        self.epoch = 0.0

    def set_epoch(self, epoch: float) -> None:
        self.epoch = epoch

    def forward(self, student_logits, teacher, targets):
        target = dkd_target(targets, teacher.logits)
        tckd, nckd = dkd_loss(student_logits, teacher.logits, target, self.temperature)
        return {"tckd": tckd.mean(), "nckd": nckd.mean(), **self.hard_term(student_logits, targets)}

    def total(self, terms):
        # the ramp is applied here, not to the terms, so the logged TCKD/NCKD stay true values
        ramp = dkd_warmup_factor(self.epoch, self.warmup_epochs)
        return sum(self.weights[name] * (1.0 if name == "hard" else ramp) * value
                   for name, value in terms.items())
