"""Vanilla KD (Hinton et al. 2015): KL between temperature-softened teacher and student
distributions, scaled by T^2 so its gradient keeps its size as T changes, plus the hard-label
loss. VanillaKD (Hao et al. 2023) runs it with T=1 and equal weights beside a BCE label loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scalekd.distill.base import Distiller, register_distiller


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), summed over classes, averaged over the batch."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


@register_distiller("kd")
class VanillaKD(Distiller):
    loss_terms = {"hard": 0.5, "kd": 0.5}

    def forward(self, student_logits, teacher, targets):
        return {"kd": kd_loss(student_logits, teacher.logits, self.temperature),
                **self.hard_term(student_logits, targets)}
