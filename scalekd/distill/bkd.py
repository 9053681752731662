"""Binary KD: the teacher's class probabilities as independent yes/no targets, the way the BCE
label loss of strategies A1/A2 treats labels (VanillaKD, Hao et al. 2023, Table 4).

Two registered names, so a run names its loss in `distill.method` and its weight key is its own:

- `bkd`, term "bce_kd": sum_i BCE(sigmoid(s_i/T), p_i) with p = softmax(t/T).
- `bkl`, term "bkl": VanillaKD's eq. 3, the binary KL
      sum_i [-p_i log(q_i/p_i) - (1-p_i) log((1-q_i)/(1-p_i))],  q_i = sigmoid(s_i/T),
  i.e. "bce_kd" minus the teacher's binary entropy sum_i H(p_i).

That entropy does not depend on the student, so the two train identically (same gradients);
"bkl" reads as a divergence (0 when q = p), "bce_kd" has the teacher's entropy as its floor.

Reduction: summed over classes (eq. 3 sums over the label space), averaged over the batch, and
scaled by T^2 as kd is (near the optimum the gradient of a T-softened term shrinks as 1/T^2).
VanillaKD's released loss (`BinaryKLDiv`: BCE-with-logits against softmax(t), no T, default
mean reduction) averages over classes too, i.e. it is "bce_kd" at T=1 / num_classes: to match
its scale on ImageNet set `distill.weights.bce_kd` (or `.bkl`) to 0.5/1000.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scalekd.distill.base import Distiller, register_distiller


def binary_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   temperature: float, divergence: bool = False) -> torch.Tensor:
    """T^2 * sum over classes of BCE(sigmoid(s/T), softmax(t/T)), averaged over the batch;
    with `divergence`, minus the teacher's binary entropy (eq. 3's BKL)."""
    p_t = F.softmax(teacher_logits.float() / temperature, dim=-1)
    loss = F.binary_cross_entropy_with_logits(student_logits.float() / temperature, p_t,
                                              reduction="none")
    if divergence:  # xlogy: 0 log 0 = 0, for classes the teacher rules out entirely
        loss = loss + torch.xlogy(p_t, p_t) + torch.xlogy(1 - p_t, 1 - p_t)
    return loss.sum(-1).mean() * temperature**2


@register_distiller("bkd")
class BinaryKD(Distiller):
    loss_terms = {"hard": 0.5, "bce_kd": 0.5}
    term = "bce_kd"

    def forward(self, student_logits, teacher, targets):
        loss = binary_kd_loss(student_logits, teacher.logits, self.temperature,
                              divergence=self.term == "bkl")
        return {self.term: loss, **self.hard_term(student_logits, targets)}


@register_distiller("bkl")
class BinaryKL(BinaryKD):
    loss_terms = {"hard": 0.5, "bkl": 0.5}
    term = "bkl"
