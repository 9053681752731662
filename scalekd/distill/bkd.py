"""Binary KD: the teacher's class probabilities as independent yes/no targets, the way the BCE
label loss of strategies A1/A2 treats labels (VanillaKD, Hao et al. 2023, Table 4).

Two registered names, so a run names its loss in `distill.method` and its weight key is its own:

- `bkd`, term "bce_kd": sum_i BCE(sigmoid(s_i/T), p_i) with p = softmax(t/T).
- `bkl`, term "bkl": VanillaKD's eq. 3, the binary KL
      sum_i [-p_i log(q_i/p_i) - (1-p_i) log((1-q_i)/(1-p_i))],  q_i = sigmoid(s_i/T),
  i.e. "bce_kd" minus the teacher's binary entropy sum_i H(p_i).

That entropy does not depend on the student, so the two train identically (same gradients);
"bkl" reads as a divergence (0 when q = p), "bce_kd" has the teacher's entropy as its floor.

Reduction over classes: `distill.bce_reduction`, as for the BCE label loss.
- mean (the default, and what in1k_a1/a2 run): the mean over batch x classes, VanillaKD's
  released loss (`BinaryKLDiv` in losses/bkd.py: BCE-with-logits against softmax(t), no T,
  torch's default mean reduction), of which "bce_kd" at T=1 is exactly the value;
- sum_classes: summed over classes, averaged over the batch, as eq. 3 is written; 1000x the
  released scale on ImageNet (num_classes x in general).
Either way the term is scaled by T^2 as kd is (near the optimum the gradient of a T-softened
term shrinks as 1/T^2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scalekd.distill.base import Distiller, register_distiller


def binary_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   temperature: float, divergence: bool = False,
                   sum_classes: bool = True) -> torch.Tensor:
    """T^2 * BCE(sigmoid(s/T), softmax(t/T)) summed over classes (`sum_classes`) or averaged
    over them, averaged over the batch; with `divergence`, minus the teacher's binary entropy
    (eq. 3's BKL)."""
    p_t = F.softmax(teacher_logits.float() / temperature, dim=-1)
    loss = F.binary_cross_entropy_with_logits(student_logits.float() / temperature, p_t,
                                              reduction="none")
    if divergence:  # xlogy: 0 log 0 = 0, for classes the teacher rules out entirely
        loss = loss + torch.xlogy(p_t, p_t) + torch.xlogy(1 - p_t, 1 - p_t)
    per_image = loss.sum(-1) if sum_classes else loss.mean(-1)
    return per_image.mean() * temperature**2


@register_distiller("bkd")
class BinaryKD(Distiller):
    listed_at = 2
    loss_terms = {"hard": 0.5, "bce_kd": 0.5}
    term = "bce_kd"

    def __init__(self, recipe, num_classes):
        super().__init__(recipe, num_classes)
        self.sum_classes = recipe.distill.bce_reduction == "sum_classes"

    def forward(self, student_logits, teacher, targets):
        loss = binary_kd_loss(student_logits, teacher.logits, self.temperature,
                              divergence=self.term == "bkl", sum_classes=self.sum_classes)
        return {self.term: loss, **self.hard_term(student_logits, targets)}


@register_distiller("bkl")
class BinaryKL(BinaryKD):
    loss_terms = {"hard": 0.5, "bkl": 0.5}
    term = "bkl"
